//! The job spec: YAML → checked, resolved [`CheckedSpec`].
//!
//! Loading goes raw → validated in one place: parse the YAML, check it
//! against the JSON Schema derived from the types (`types.rs`, so the schema
//! file and the code cannot disagree), run the rules the schema cannot
//! express (`rules.rs`, `structured.rs`), then deserialize and resolve
//! (`resolve.rs`: the wire, the run settings, the endpoint, the paths).
//! Every problem found is reported, each with `FILE:LINE:COL: field.path: message`.

mod check;
mod gold;
pub mod limits;
mod locate;
mod place;
mod request_keys;
mod resolve;
mod rules;
pub mod structured;
mod types;
pub mod units;

use std::path::{Path, PathBuf};

pub use check::check;
pub use gold::{GoldField, GoldKind};
pub use locate::{Seg, dotted, from_pointer};
use resolve::resolve;
pub use resolve::{
    CheckedSpec, DEFAULT_ANTHROPIC_VERSION, Endpoint, Gate, HaltPolicy, RunSettings, Wire,
    from_saved,
};
pub use types::*;

/// The spec format version this binary reads.
pub const SPEC_VERSION: u32 = 1;

/// One problem in a spec, placed in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    /// Dotted field path, `(root)` for the whole document.
    pub field: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read spec {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", render_problems(path, problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

impl SpecError {
    pub fn hint(&self) -> Option<String> {
        match self {
            SpecError::Read { .. } => None,
            SpecError::Invalid { problems, .. } => Some(format!(
                "{} problem{} in the spec; `batchgrader schema` prints every allowed key",
                problems.len(),
                if problems.len() == 1 { "" } else { "s" }
            )),
        }
    }
}

fn render_problems(path: &Path, problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| {
            format!(
                "{}:{}:{}: {}: {}",
                path.display(),
                p.line,
                p.column,
                p.field,
                p.message
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The JSON Schema of the job spec, as `batchgrader schema` prints it.
pub fn schema_json() -> String {
    let schema = schemars::schema_for!(JobSpec);
    let mut s = serde_json::to_string_pretty(&schema).expect("a schema always serializes");
    s.push('\n');
    s
}

/// Read and check a spec file.
pub fn load(path: &Path) -> Result<CheckedSpec, SpecError> {
    let text =
        limits::read_capped(path, limits::MAX_SPEC_BYTES).map_err(|source| SpecError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    check(path, &text)
}

#[cfg(test)]
mod tests;
