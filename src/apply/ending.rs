//! How a run ended, and the summary people and `--json` read.

use serde::Serialize;

use crate::agreement::FieldAgreement;
use crate::grades::{FailureClass, PropertyStats};

use super::decide::GateCheck;
use crate::state::PlanRecord;

use super::Graded;

/// What the command line asked for.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApplyOptions {
    /// Submit what may be submitted, then exit; a later `resume` collects.
    pub detach: bool,
    /// `--retry-failed`, `--retry-parse-failures`: rows with a final
    /// outcome to send again, with a fresh set of attempts.
    pub retry: super::decide::RetryAsked,
    /// The job's deadline, fixed at its first `apply` (`deadline:`).
    pub deadline: Option<crate::deadline::Deadline>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Ending {
    /// Every request has a final outcome and the output is written.
    Finished,
    /// `--detach`: batches are out, nobody watches them.
    Detached,
    /// Ctrl-C: state is consistent, batches keep running.
    Interrupted,
    /// The halt policy stopped the job.
    Halted(String),
    /// The deadline's margin was reached: the batches that were out were
    /// cancelled and collected; the rows left go to the direct lane.
    Deadline,
}

impl Ending {
    /// What the exit code needs to know of this ending.
    pub fn run_end(&self, summary: &Summary) -> crate::exit::RunEnd {
        use crate::exit::RunEnd;
        match self {
            Ending::Finished => RunEnd::Finished {
                rows_failed: summary.failed + summary.parse_failures + summary.not_graded > 0,
                below_gate: summary.gate.as_ref().is_some_and(GateCheck::failed),
            },
            Ending::Halted(_) => RunEnd::Halted,
            Ending::Detached | Ending::Interrupted | Ending::Deadline => RunEnd::StillRunning,
        }
    }
}

/// The end-of-run summary (human text and `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub job: String,
    pub ending: String,
    pub rows: u64,
    pub graded: u64,
    pub parse_failures: u64,
    pub failed: u64,
    pub not_graded: u64,
    pub already_graded_before: u64,
    pub estimated_cost_usd: Option<f64>,
    pub actual_cost_usd: f64,
    pub output_path: Option<String>,
    /// For `number` and `label` parses: how often each value occurs.
    pub distribution: Vec<(String, u64)>,
    /// For `output.schema`: each numeric property's distribution (min,
    /// quartiles, max, histogram), each enum or boolean property's counts.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub grades: Vec<PropertyStats>,
    /// Parse failures by reason (`not JSON`, `maximum at /accuracy`), most frequent first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub parse_failures_by_reason: Vec<(String, u64)>,
    /// Each failure class (API error code, parse-failure reason) with up
    /// to three example rows.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<FailureClass>,
    /// Agreement with the gold values (`output.gold`), per field.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub agreement: Vec<FieldAgreement>,
    /// The quality gate's verdict at the end (`halt.min_kappa`, `halt.min_accuracy`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateCheck>,
    pub simulated: bool,
    pub message: Option<String>,
    /// When most rows failed for good: the command that sends them again
    /// once the cause is fixed (`batchgrader apply SPEC --retry-failed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_hint: Option<String>,
    /// Paid at batch prices, what standard prices would have cost, the difference.
    pub receipt: crate::status::Receipt,
    /// A batch job that switched lanes (its deadline): requests and spend of each.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lanes: Option<Lanes>,
    /// The plan's upper bound of the cost ("at most"), when it has one: the
    /// summary says so when the spend passed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_at_most_usd: Option<f64>,
}

/// Requests answered and spend of each lane of one job (a batch job whose
/// deadline sent its last rows in the direct lane).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Lanes {
    pub batch_requests: u64,
    pub batch_usd: f64,
    pub direct_requests: u64,
    pub direct_usd: f64,
}

impl Ending {
    /// The word the summary and `--json` use.
    pub fn word(&self) -> &'static str {
        match self {
            Ending::Finished => "finished",
            Ending::Detached => "detached",
            Ending::Interrupted => "interrupted",
            Ending::Halted(_) => "halted",
            Ending::Deadline => "deadline",
        }
    }
}

/// What a run ended with, for `Summary::of`: both runners (batch and
/// direct) end the same way.
pub struct RunEnd<'a> {
    pub job: &'a str,
    pub ending: &'a Ending,
    pub plan: &'a PlanRecord,
    /// The output pass's counts and statistics (default when none was written).
    pub graded: Graded,
    /// The final snapshot: costs and receipt.
    pub snap: &'a crate::status::Snapshot,
    pub output_path: Option<String>,
    pub simulated: bool,
    pub message: Option<String>,
    /// The quality gate, judged on the output's agreement.
    pub gate: Option<GateCheck>,
}

impl Summary {
    pub fn of(end: RunEnd) -> Summary {
        let w = end.graded.written;
        Summary {
            job: end.job.to_string(),
            ending: end.ending.word().to_string(),
            rows: end.plan.rows,
            graded: w.ok,
            parse_failures: w.parse_errors,
            failed: w.failed,
            not_graded: w.not_graded,
            already_graded_before: end.plan.already_done,
            estimated_cost_usd: end.snap.estimated_cost_usd,
            actual_cost_usd: end.snap.actual_cost_usd,
            output_path: end.output_path,
            distribution: end.graded.distribution,
            grades: end.graded.grades,
            parse_failures_by_reason: end.graded.parse_failures_by_reason,
            gate: end.gate,
            failures: end.graded.failures,
            agreement: end.graded.agreement,
            simulated: end.simulated,
            message: end.message,
            retry_hint: None,
            lanes: None,
            plan_at_most_usd: None,
            receipt: end.snap.receipt,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::RunEnd;

    #[test]
    fn endings_for_the_exit_code() {
        let s = Summary {
            job: "j".into(),
            ending: "finished".into(),
            rows: 10,
            graded: 10,
            parse_failures: 0,
            failed: 0,
            not_graded: 0,
            already_graded_before: 0,
            estimated_cost_usd: None,
            actual_cost_usd: 0.0,
            output_path: None,
            distribution: vec![],
            grades: vec![],
            parse_failures_by_reason: vec![],
            failures: vec![],
            agreement: vec![],
            gate: None,
            simulated: false,
            message: None,
            retry_hint: None,
            lanes: None,
            plan_at_most_usd: None,
            receipt: Default::default(),
        };
        let clean = RunEnd::Finished {
            rows_failed: false,
            below_gate: false,
        };
        assert_eq!(Ending::Finished.run_end(&s), clean);
        assert_eq!(Ending::Halted("x".into()).run_end(&s), RunEnd::Halted);
        assert_eq!(Ending::Detached.run_end(&s), RunEnd::StillRunning);
        assert_eq!(Ending::Interrupted.run_end(&s), RunEnd::StillRunning);
        for bad in 0..3 {
            let mut t = s.clone();
            match bad {
                0 => t.failed = 1,
                1 => t.parse_failures = 1,
                _ => t.not_graded = 1,
            }
            let failed = RunEnd::Finished {
                rows_failed: true,
                below_gate: false,
            };
            assert_eq!(Ending::Finished.run_end(&t), failed, "case {bad}");
        }
    }
}
