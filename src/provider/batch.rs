//! The provider seam: what the runner needs from a batch API, in the
//! runner's own terms. A backend (OpenAI's Files + Batches under
//! `provider/openai/`, Anthropic's Message Batches under
//! `provider/anthropic/`) implements
//! [`BatchBackend`]; `apply` drives it and imports no wire type.
//!
//! The contract, step by step:
//! - a chunk file holds one request line per row (`{"custom_id", "method",
//!   "url", "body"}`, the OpenAI batch line); a backend encodes it for its
//!   own wire in [`BatchBackend::stage`] or [`BatchBackend::submit`];
//! - [`BatchBackend::submit`] carries a [`SubmitIdentity`] that survives a
//!   crash, and [`BatchBackend::find`] finds what an earlier submit with the
//!   same identity made, so an unclear create is never repeated blindly;
//! - [`BatchBackend::status`] answers in neutral terms ([`RemoteState`]);
//! - results are fetched to files and classified line by line into
//!   [`ResultLine`]s; requests in no line are the runner's business.
//!
//! Every method returns a [`ProviderError`] on failure, whose class
//! ([`ProviderError::step_class`]) tells the runner whether to park the
//! chunk and try again, or to stop.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ProviderError;

/// What one batch may hold at this provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    pub max_requests: u64,
    pub max_bytes: u64,
}

/// Who a submit belongs to: the same values on every create of one logical
/// submission, so a create that may have happened can be recognised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmitIdentity {
    pub job: String,
    pub chunk: u32,
    pub attempt: u32,
    /// Counts logical submissions of the chunk attempt (a new one only after
    /// the provider refused to run the previous, e.g. `token_limit_exceeded`).
    pub submit: u32,
    /// A prefix of the plan hash.
    pub plan: String,
    /// When the intent to create was recorded (Unix seconds): a batch made
    /// for it cannot be older.
    pub intent_at: u64,
    /// How many requests the chunk holds: a batch of another size is not
    /// this submit's (for providers whose batches carry no metadata).
    pub requests: u64,
}

/// How a batch ended, in the runner's terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum EndKind {
    /// Ran to the end; every request has a line (or should have).
    Completed,
    /// Refused as a whole (validation); `reason` says why.
    Failed { reason: String },
    /// The completion window ran out; done work is in the results.
    Expired,
    /// Cancelled; done work is in the results.
    Cancelled,
    /// The provider no longer knows the batch (it answers 404 for it): its
    /// requests are sent again.
    Lost { reason: String },
}

/// A file (or URL) of results to fetch once a batch has ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultRef {
    /// A short name for the local file (`output`, `errors`, `results`).
    pub name: String,
    /// The provider's id or URL for it.
    pub id: String,
}

/// Token usage as the provider billed it for a whole batch, when it says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BilledUsage {
    /// Input at the plain input price: without `cache_read_tokens`.
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// The batch's cached input (`Batch.usage.input_tokens_details
    /// .cached_tokens`); 0 in units recorded before it was read, whose
    /// `input_tokens` still hold them.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_read_tokens: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reasoning_tokens: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Where a batch is, as the runner needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteState {
    /// Still working; counts may lag (some providers give none until the end).
    Running {
        label: String,
        done: u64,
        failed: u64,
    },
    /// Ended: fetch `results`, then account for every request.
    Ended {
        label: String,
        end: EndKind,
        results: Vec<ResultRef>,
        usage: Option<BilledUsage>,
    },
    /// The provider would not run it now (e.g. the enqueued-token quota is
    /// full): submit the same requests again later.
    Requeue { label: String, reason: String },
}

/// A batch as a backend reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteBatch {
    pub id: String,
    pub state: RemoteState,
}

/// A batch the provider lists as made for a job's plan, with the submit
/// identity its create carried: what finds a twin (a batch made behind the
/// job's back, by a gateway that retried a create on its own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnBatch {
    pub chunk: u32,
    pub attempt: u32,
    pub submit: u32,
    pub batch: RemoteBatch,
}

/// A result line that cannot be merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineError {
    /// It says nothing about a request (blank, not JSON, not a result).
    Unreadable(String),
    /// A well-formed result of another submit (its tag says so): named,
    /// never merged, and no sign that the file is not a result file.
    NotThisSubmit(String),
}

/// One classified result line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResultLine {
    Success {
        custom_id: String,
        answer: String,
        input_tokens: u64,
        output_tokens: u64,
        /// Prompt-cache writes and reads, billed apart from `input_tokens`
        /// (Anthropic's `cache_creation_input_tokens`,
        /// `cache_read_input_tokens`); 0 where a provider has none.
        cache_write_tokens: u64,
        cache_read_tokens: u64,
        /// Of `output_tokens`, those spent reasoning (OpenAI's
        /// `reasoning_tokens`); 0 where a provider does not say.
        reasoning_tokens: u64,
    },
    Failure {
        custom_id: String,
        code: String,
        message: String,
        /// Whether sending the request again may succeed.
        retryable: bool,
        /// False when the request never ran (its batch expired or was
        /// cancelled before it).
        ran: bool,
    },
}

impl ResultLine {
    pub fn custom_id(&self) -> &str {
        match self {
            ResultLine::Success { custom_id, .. } | ResultLine::Failure { custom_id, .. } => {
                custom_id
            }
        }
    }
}

/// A batch API as the runner drives it.
///
/// `async fn` in a trait gives futures without a `Send` bound; the runner
/// awaits them on its own task, so none is needed.
#[allow(async_fn_in_trait)]
pub trait BatchBackend {
    /// For messages and the ledger: `openai`, `simulated`, ...
    fn name(&self) -> &str;

    /// The most one batch may hold.
    fn limits(&self) -> BatchLimits;

    /// Make the chunk file available to a submit: upload it and return the
    /// provider's file id, or `None` for providers that take requests inline.
    async fn stage(&self, chunk: &Path, name: &str) -> Result<Option<String>, ProviderError>;

    /// Create the batch. An error of class [`StepClass::Unclear`] means it
    /// may exist anyway: call [`BatchBackend::find`] before submitting again.
    async fn submit(
        &self,
        staged: Option<&str>,
        chunk: &Path,
        identity: &SubmitIdentity,
    ) -> Result<RemoteBatch, ProviderError>;

    /// The batch an earlier submit with this identity (and staged file) made,
    /// if the provider has one.
    async fn find(
        &self,
        staged: Option<&str>,
        identity: &SubmitIdentity,
    ) -> Result<Option<RemoteBatch>, ProviderError>;

    async fn status(&self, batch_id: &str) -> Result<RemoteBatch, ProviderError>;

    /// Every batch the provider holds that a create of this job's plan
    /// (`job`, `plan` as in [`SubmitIdentity`]) made since `since` (Unix
    /// seconds), by the identity each carries; `None` when this provider's
    /// batches carry nothing that says so (Message Batches have no
    /// metadata, and a server may drop it).
    async fn list_own(
        &self,
        _job: &str,
        _plan: &str,
        _since: u64,
    ) -> Result<Option<Vec<OwnBatch>>, ProviderError> {
        Ok(None)
    }

    /// Stream one result file to `dest` (written whole or not at all);
    /// returns its size in bytes.
    async fn fetch(&self, result: &ResultRef, dest: &Path) -> Result<u64, ProviderError>;

    /// Classify one line of a result file fetched for `submit`; `Err` for a
    /// line that says nothing about a request (blank, not JSON), or that
    /// proves it is not this submit's (a backend whose lines carry the
    /// submit's tag checks it on every line), with the reason.
    fn classify(&self, line: &str, submit: &SubmitIdentity) -> Result<ResultLine, LineError>;

    async fn cancel(&self, batch_id: &str) -> Result<(), ProviderError>;

    /// The HTTP calls out now, so the live view can say what it waits for.
    fn calls(&self) -> Option<&super::CallWatch> {
        None
    }

    /// Delete what the provider keeps for a merged batch (staged file, result
    /// files). Best effort: the caller only reports failures.
    async fn clean_up(
        &self,
        staged: Option<&str>,
        batch_id: &str,
        results: &[ResultRef],
    ) -> Result<(), ProviderError>;
}

/// What a failed step means to the runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepClass {
    /// Rate limits, server errors, network trouble: wait and try again.
    Transient,
    /// A create whose outcome is unknown: look for the batch before another.
    Unclear,
    /// Retrying cannot help (refused key, no credit, a 400 on create...).
    Final,
}

impl ProviderError {
    pub fn step_class(&self) -> StepClass {
        if self.is_unclear() {
            StepClass::Unclear
        } else if self.is_retryable() || self.kind() == super::ErrorKind::Protocol {
            // A 2xx with a body that is not what the protocol promises is
            // most often a proxy's hiccup: worth another try later, and the
            // give-up clock bounds it.
            StepClass::Transient
        } else {
            StepClass::Final
        }
    }
}
