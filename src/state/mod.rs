//! The persistent state of a job: `<state>/<job>/`.
//!
//! Layout: `db/` (sled: job, plan, units), `outcomes.jsonl` (results and
//! failures by request fingerprint), `chunks/plan-<generation>/` (the plan's
//! request files `chunk-NNNNN.jsonl` and its per-row records
//! `requests.idx`/`.keys`),
//! `results/` (downloaded result files), `status.json`, `events.jsonl`, and
//! `lock` (held while a command works on the job).
//!
//! `records.rs` holds what is recorded (the job, the plan, units, request
//! and outcome records), `store.rs` the store that keeps it (`JobStore`),
//! `error.rs` what can go wrong. sled stays behind this module's API. Plans are written by generation: a
//! new plan's files are complete on disk before the single `plan` record
//! switches to it, so a crash at any point leaves either the old plan or the
//! new one, never a mix.

pub mod chunkfile;
pub mod gold;
pub mod journal;
pub mod layout;
mod outcome_index;
mod outcomes;
pub mod requests;
mod window;

mod error;
mod records;
mod store;

pub use crate::provider::batch::{BilledUsage, EndKind, ResultRef};
pub use error::{Access, StateError, denied_at};
pub use layout::Layout;
pub use outcomes::Outcome;
pub use records::*;
pub use requests::Lookup as RequestLookup;
/// Writes a new plan's request records into its folder.
pub use requests::Writer as RequestWriter;
pub use store::{FixedDeadline, JobStore, OutcomeAppender, owner_only};

/// Version of the on-disk layout. A binary refuses state newer than it knows.
pub const FORMAT_VERSION: u32 = 1;

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
