//! Does the judge agree with the user's gold values? `metrics` holds the
//! pure formulas; this module turns a job's rows into them, per graded
//! field or schema property, and keeps examples of the disagreements.

pub mod metrics;

use serde::Serialize;

pub use metrics::{Binary, Categorical, ClassStats, Confusion, Interval, Ordinal};

/// How a field's values compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Labels, enums, booleans, regex captures, text (exact after trimming).
    Categorical,
    /// Numbers.
    Ordinal,
}

/// A gold value that is not among the field's classes (a typo in the gold
/// file), with how many rows hold it. Such rows are left out of the metrics.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UnknownGold {
    pub value: String,
    pub rows: u64,
}

/// One row where the judge and the gold value differ.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Disagreement {
    /// The row's number in the input (1-based, as the output's order).
    pub row: u64,
    /// The row's id (`input.id`), or its number.
    pub key: String,
    pub gold: String,
    pub judge: String,
    /// The answer as the model wrote it, cut to 200 characters.
    pub raw: String,
}

/// Agreement of one graded field (or schema property) with its gold column.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldAgreement {
    /// `answer`, or `answer.category` for a schema property.
    pub field: String,
    pub gold_column: String,
    pub kind: Kind,
    /// Rows with no gold value (an empty cell).
    pub missing_gold: u64,
    /// Rows with a gold value but no usable grade (failed, parse error, not graded).
    pub no_grade: u64,
    /// Gold values that are not among the field's classes, most frequent first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unknown_gold: Vec<UnknownGold>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub categorical: Option<Categorical>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub binary: Option<Binary>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub ordinal: Option<Ordinal>,
    /// What could not be computed, in words (κ with one class, no gold rows).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The first few disagreements per (gold, judge) pair.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub disagreements: Vec<Disagreement>,
}

impl FieldAgreement {
    /// Rows compared (gold and grade both present and known).
    pub fn n(&self) -> u64 {
        match (&self.categorical, &self.ordinal) {
            (Some(c), _) => c.n,
            (_, Some(o)) => o.n,
            _ => 0,
        }
    }
}
