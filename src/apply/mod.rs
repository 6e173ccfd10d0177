//! `apply`: submit, poll, download and merge, crash-safe. See the
//! architecture note in this folder's files: `machine` decides, this shell acts.

pub mod answer;
pub mod machine;
