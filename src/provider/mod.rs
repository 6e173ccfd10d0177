//! Providers behind one seam.
//!
//! `batch` is the seam the runner drives ([`BatchBackend`], in the runner's
//! own terms); `openai` implements it for OpenAI's Files + Batches protocol
//! (and Azure, LiteLLM, any server of that protocol), `anthropic` for
//! Message Batches. Shared by every backend and direct mode: `http` (the
//! one HTTP core: client setup and auth headers, the retry loop, bounded
//! reads, streamed downloads), `config` (base URL, key as a [`Secret`]),
//! `retry` (the one retry classifier), `error` ([`ProviderError`]) and
//! `api_error` ([`ApiError`], the error body servers send).
//!
//! Comments cite the public references behind each wire detail: OpenAI's
//! OpenAPI spec (`openai/openai-openapi`), the official SDKs' source files,
//! the Azure OpenAI batch docs and, where the docs are silent, named GitHub
//! issues.

pub mod anthropic;
pub mod any;
pub mod api_error;
pub mod batch;
pub mod bounded;
pub mod config;
pub mod direct;
pub mod error;
pub(crate) mod http;
pub mod openai;
pub mod retry;
pub mod watch;

pub use any::AnyBatches;
pub use api_error::ApiError;
pub use batch::{
    BatchBackend, BatchLimits, BilledUsage, EndKind, LineError, OwnBatch, RemoteBatch, RemoteState,
    ResultLine, ResultRef, StepClass, SubmitIdentity,
};
pub use config::{ClientConfig, DEFAULT_BASE_URL, Secret, encode_path_segment};
pub use error::{ErrorKind, ProviderError};
pub use openai::lines::{
    LineFailure, LineOutcome, LineParseError, LineSuccess, TokenUsage, classify_line,
    failure_is_retryable,
};
pub use openai::types::{
    Batch, BatchError, BatchErrors, BatchList, BatchStatus, BatchUsage, FileDeleted, FileObject,
    RequestCounts,
};
pub use openai::{OpenAiBatches, OpenAiClient};
pub use retry::{Decision, Outcome, Reason, RetryHeaders, RetryPolicy, TransportFailure};
pub use watch::{CallWatch, Waiting};
