//! `apply`: submit, poll, download and merge, crash-safe.
//!
//! Architecture: `decide` decides (pure functions over plain data), the
//! shell in `runner` acts, through the provider seam
//! (`provider::BatchBackend`). Every transition of a unit is written to
//! the state store and flushed *before* the next side effect (ARCHITECTURE.md, "Crash protocol"):
//!
//! ```text
//! planned ─upload→ uploaded ─record intent→ creating ─create→ submitted ─poll…→ ended
//!   ─download→ downloaded ─classify every line→ merged
//! ```
//!
//! A `kill -9` at any instant leaves a state from which `resume` goes on:
//! an upload is simply redone (a spare file costs nothing), a unit found in
//! `creating` first looks for the batch its submit may have made and adopts
//! it rather than creating another, and downloads and merges are idempotent.
//! A step that fails transiently parks its unit with a recorded, growing
//! backoff; the unit stays in its phase, so the same rule holds after an
//! unclear create: whatever comes next looks before it creates.
//! After every transition `status.json` is rewritten, so `status` works
//! while this process holds the job's lock.

pub mod decide;
pub mod direct;
mod ending;
mod frame;
mod judge;
mod progress;
mod quality;
mod runner;
pub mod throughput;

pub use ending::{ApplyOptions, Ending, Lanes, RunEnd, Summary};
pub use frame::{RunFrame, SampleFile, request_state, snapshot_of, tally_of};
pub use judge::{Graded, Rows, gold_rows, grade_stats, write_output_file, write_output_to};
pub use progress::Progress;
pub use runner::Runner;

// The crash tests' kill points, for the runners.
pub(crate) use crate::interrupt::{kill_now, kill_point};
