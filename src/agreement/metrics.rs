//! Agreement between a judge and gold values: numbers in, numbers out.
//! Every function here is pure and checked against scikit-learn / scipy on
//! committed fixtures (`tests/fixtures/gen/agreement_expected.py`).
//!
//! Undefined values (κ with one class only, precision of a class the judge
//! never answered) are `None`, never NaN: callers say why in words.

use serde::Serialize;

/// The seed of every bootstrap: runs of the same job give the same interval.
pub const BOOTSTRAP_SEED: u64 = 0x6261_7463_6867_7264; // "batchgrd"
/// Resamples of the bootstrap (fewer for very large sets: see `resamples_for`).
pub const BOOTSTRAP_RESAMPLES: u32 = 1000;

/// A 95% interval, serialized as `[lo, hi]`.
pub type Interval = [f64; 2];

/// One class of a categorical field.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassStats {
    pub label: String,
    /// Gold rows of this class.
    pub support: u64,
    /// Of the rows the judge put in this class, the share that are; `None`
    /// when the judge never answered it.
    pub precision: Option<f64>,
    /// `None` when no gold row is of this class.
    pub recall: Option<f64>,
    /// `None` when precision or recall is undefined, or both are 0.
    pub f1: Option<f64>,
}

/// Rows gold, columns judge, in `labels` order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Confusion {
    pub labels: Vec<String>,
    pub matrix: Vec<Vec<u64>>,
}

/// Two classes: how the judge does on each, and the judge's positive rate
/// over rows without gold corrected for its measured error rates.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Binary {
    /// The class counted as positive.
    pub positive: String,
    /// Sensitivity: positives the judge called positive. `None` with no gold positive.
    pub tpr: Option<f64>,
    /// Wilson 95% interval of `tpr`.
    pub tpr_ci: Option<Interval>,
    /// Specificity: negatives the judge called negative. `None` with no gold negative.
    pub tnr: Option<f64>,
    pub tnr_ci: Option<Interval>,
    /// Rows without gold that the judge graded (both classes).
    pub unlabelled: u64,
    /// The judge's positive share over those rows; `None` when there are none.
    pub judge_positive_rate: Option<f64>,
    /// Rogan–Gladen: the positive share corrected for TPR and TNR, clipped
    /// to [0, 1]; `None` when there are no unlabelled rows or the judge is no
    /// better than chance (TPR + TNR <= 1).
    pub corrected_positive_rate: Option<f64>,
    /// Its 95% interval (delta method, clipped to [0, 1]).
    pub corrected_ci: Option<Interval>,
}

/// Agreement on a categorical field (labels, enums, booleans, regex
/// captures, text).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Categorical {
    pub n: u64,
    pub accuracy: f64,
    /// Cohen's κ; `None` when undefined (gold and judge both use one and the
    /// same class only, so chance agreement is 1).
    pub kappa: Option<f64>,
    /// Percentile bootstrap 95% interval of κ (fixed seed).
    pub kappa_ci: Option<Interval>,
    /// Accuracy of always answering the commonest gold value.
    pub baseline: f64,
    /// That value.
    pub baseline_label: String,
    pub classes: Vec<ClassStats>,
    pub confusion: Confusion,
}

/// Agreement on a numeric field.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ordinal {
    pub n: u64,
    /// Share with judge == gold.
    pub exact: f64,
    /// Share with |judge - gold| <= 1.
    pub within_1: f64,
    /// Mean absolute error.
    pub mae: f64,
    /// Mean signed difference, judge - gold.
    pub bias: f64,
    /// Quadratic-weighted κ over the integer scale min..=max of both sides;
    /// `None` when a value is not an integer, the scale is wider than
    /// `MAX_SCALE`, or κ is undefined (one value only).
    pub weighted_kappa: Option<f64>,
    /// Spearman's ρ (average ranks for ties); `None` when either side is constant.
    pub spearman: Option<f64>,
    /// Gold × judge counts over the distinct values (sorted numerically),
    /// when there are at most 25 of them: the report's heat table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confusion: Option<Confusion>,
}

/// Widest integer scale weighted κ is computed on.
pub const MAX_SCALE: i64 = 1000;

/// Gold-judge pairs of a categorical field. `order`: the field's declared
/// classes (labels, enum values, `false`/`true`) listed first, in that
/// order; values seen that are not in it follow, sorted. Empty `pairs`
/// gives `n: 0` and zero rates.
pub fn categorical(pairs: &[(&str, &str)], order: &[String]) -> Categorical {
    let _ = (pairs, order);
    unimplemented!()
}

/// Cohen's κ of gold-judge pairs; `None` when undefined.
pub fn cohen_kappa(pairs: &[(&str, &str)]) -> Option<f64> {
    let _ = pairs;
    unimplemented!()
}

/// Percentile bootstrap 95% interval of κ with `seed`; resamples where κ is
/// undefined are left out; `None` when fewer than half remain or `pairs` is empty.
pub fn kappa_interval(pairs: &[(&str, &str)], seed: u64, resamples: u32) -> Option<Interval> {
    let _ = (pairs, seed, resamples);
    unimplemented!()
}

/// How many resamples for `n` pairs: `BOOTSTRAP_RESAMPLES`, fewer when
/// `n * resamples` would pass 50 million (never under 200).
pub fn resamples_for(n: usize) -> u32 {
    let _ = n;
    unimplemented!()
}

/// TPR, TNR and the corrected positive rate. `pairs`: gold-judge pairs of a
/// two-class field; `unlabelled`: (judge positives, judge answers) over rows
/// without gold.
pub fn binary(pairs: &[(&str, &str)], positive: &str, unlabelled: (u64, u64)) -> Binary {
    let _ = (pairs, positive, unlabelled);
    unimplemented!()
}

/// Wilson score 95% interval of `successes` out of `n`; `None` when n is 0.
pub fn wilson(successes: u64, n: u64) -> Option<Interval> {
    let _ = (successes, n);
    unimplemented!()
}

/// Gold-judge pairs of a numeric field.
pub fn ordinal(pairs: &[(f64, f64)]) -> Ordinal {
    let _ = pairs;
    unimplemented!()
}

/// Spearman's ρ; `None` when either side is constant or there are fewer than 2 pairs.
pub fn spearman(pairs: &[(f64, f64)]) -> Option<f64> {
    let _ = pairs;
    unimplemented!()
}

/// Quadratic-weighted κ of integer pairs over the scale min..=max.
pub fn quadratic_kappa(pairs: &[(i64, i64)]) -> Option<f64> {
    let _ = pairs;
    unimplemented!()
}
