//! OpenAI-compatible batch provider: HTTP client, wire types, retry
//! classification and result-line classification.
//!
//! Everything here follows `reference/provider-apis.md` (cited as §n). The
//! pure parts (`types`, `lines`, `retry`) hold the decisions and are
//! table-tested; `openai` is the thin async shell around reqwest.

pub mod config;
pub mod error;
pub mod lines;
pub mod openai;
pub mod retry;
pub mod types;

pub use config::{ClientConfig, DEFAULT_BASE_URL, Secret, encode_path_segment};
pub use error::{ErrorKind, ProviderError};
pub use lines::{
    LineFailure, LineOutcome, LineParseError, LineSuccess, TokenUsage, classify_line,
    failure_is_retryable,
};
pub use openai::OpenAiClient;
pub use retry::{Decision, Outcome, Reason, RetryHeaders, RetryPolicy, TransportFailure};
pub use types::{
    ApiError, Batch, BatchError, BatchErrors, BatchList, BatchStatus, BatchUsage, FileDeleted,
    FileObject, RequestCounts,
};
