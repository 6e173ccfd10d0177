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
mod frame;
mod progress;
mod runner;
pub mod throughput;

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::answer;
use crate::error::{Error, Result};
use crate::grades::{self, PropertyStats};
use crate::input::Source;
use crate::output::{self, AddedColumns, RowResult, RowStatus, Written};
use crate::report::Ui;
use crate::spec::{CheckedSpec, ParseMode};
use crate::state::{JobStore, Outcome, PlanRecord};
pub use frame::{RunFrame, tally_of};
pub use progress::Progress;
pub use runner::Runner;

/// What the command line asked for.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApplyOptions {
    /// Submit what may be submitted, then exit; a later `resume` collects.
    pub detach: bool,
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
}

impl Ending {
    /// What the exit code needs to know of this ending.
    pub fn run_end(&self, summary: &Summary) -> crate::exit::RunEnd {
        use crate::exit::RunEnd;
        match self {
            Ending::Finished => RunEnd::Finished {
                rows_failed: summary.failed + summary.parse_failures + summary.not_graded > 0,
            },
            Ending::Halted(_) => RunEnd::Halted,
            Ending::Detached | Ending::Interrupted => RunEnd::StillRunning,
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
    pub simulated: bool,
    pub message: Option<String>,
    /// Paid at batch prices, what standard prices would have cost, the difference.
    pub receipt: crate::status::Receipt,
}

impl Ending {
    /// The word the summary and `--json` use.
    pub fn word(&self) -> &'static str {
        match self {
            Ending::Finished => "finished",
            Ending::Detached => "detached",
            Ending::Interrupted => "interrupted",
            Ending::Halted(_) => "halted",
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
            simulated: end.simulated,
            message: end.message,
            receipt: end.snap.receipt,
        }
    }
}

/// A running job's snapshot, filled alike by the batch and the direct runner:
/// what the plan says (rows, model, estimate) and what the run has done.
/// Each runner adds what is its own with struct update syntax (units,
/// receipt, the direct-mode view, the outage, the step); those start empty.
pub(crate) fn snapshot_of(
    job: &str,
    plan: &PlanRecord,
    tally: &decide::Tally,
    state: crate::status::RunState,
    started_at: u64,
    spent_usd: f64,
) -> crate::status::Snapshot {
    crate::status::Snapshot {
        job: job.to_string(),
        state,
        pid: (state == crate::status::RunState::Running).then(std::process::id),
        updated_at: crate::state::now_secs(),
        started_at: Some(started_at),
        model: plan.model.clone(),
        totals: decide::totals(plan.rows, plan.outstanding, plan.already_done, tally),
        estimated_cost_usd: plan
            .estimate
            .as_ref()
            .map(|e| e.expected.or(e.high).unwrap_or(e.low)),
        actual_cost_usd: spent_usd,
        output_path: None,
        message: None,
        receipt: Default::default(),
        outage_since: None,
        step: None,
        units: Vec::new(),
        direct: None,
    }
}

// The crash tests' kill points, here for the runners' `super::kill_point`.
pub(crate) use crate::interrupt::{kill_now, kill_point};

/// What the output pass learned besides the rows.
#[derive(Debug, Clone, Default)]
pub struct Graded {
    pub written: Written,
    /// For `number` and `label` parses: how often each value occurs.
    pub distribution: Vec<(String, u64)>,
    /// For `output.schema`: each numeric, enum or boolean property's statistics.
    pub grades: Vec<PropertyStats>,
    /// Parse failures by reason, most frequent first.
    pub parse_failures_by_reason: Vec<(String, u64)>,
    /// Final API failures by error code, most frequent first.
    pub api_failures_by_code: Vec<(String, u64)>,
}

/// Turns each row's outcome into its output values and adds up what the
/// grades look like; the one place both the output file and `report` judge
/// answers, so they cannot disagree.
struct Judge {
    parser: answer::Parser,
    mode: ParseMode,
    dist: BTreeMap<String, u64>,
    tally: grades::Tally,
    written: Written,
    failure_codes: BTreeMap<String, u64>,
}

impl Judge {
    fn new(spec: &CheckedSpec) -> Result<Judge> {
        Ok(Judge {
            parser: answer::Parser::for_spec(spec).map_err(Error::usage)?,
            mode: spec.output().parse,
            dist: BTreeMap::new(),
            tally: grades::Tally::new(spec.schema.as_ref()),
            written: Written::default(),
            failure_codes: BTreeMap::new(),
        })
    }

    fn row(&mut self, outcome: Option<Outcome>) -> RowResult {
        let r = match outcome {
            Some(Outcome::Success(res)) => {
                let mut r = RowResult {
                    raw: res.answer.clone(),
                    input_tokens: Some(res.input_tokens),
                    output_tokens: Some(res.output_tokens),
                    ..RowResult::default()
                };
                match self.parser.parse_value(&res.answer) {
                    Ok(v) => {
                        if let Some(j) = &v.json {
                            self.tally.add(j);
                        } else if matches!(self.mode, ParseMode::Number | ParseMode::Label) {
                            *self.dist.entry(v.text.clone()).or_default() += 1;
                        }
                        r.value = v.text;
                        r.json = v.json;
                        r.status = RowStatus::Ok;
                    }
                    Err(why) => {
                        self.tally.fail(&why.class);
                        r.status = RowStatus::ParseError;
                        r.error = why.message;
                    }
                }
                r
            }
            Some(Outcome::Failure(f)) => {
                *self.failure_codes.entry(f.code.clone()).or_default() += 1;
                RowResult {
                    status: RowStatus::Failed,
                    error: format!("{}: {}", f.code, f.message),
                    ..RowResult::default()
                }
            }
            None => RowResult::default(),
        };
        self.written.count(r.status);
        r
    }

    fn finish(self) -> Graded {
        let mut dist: Vec<(String, u64)> = self.dist.into_iter().collect();
        if self.mode == ParseMode::Number {
            dist.sort_by(|a, b| {
                let x: f64 = a.0.parse().unwrap_or(f64::MAX);
                let y: f64 = b.0.parse().unwrap_or(f64::MAX);
                x.total_cmp(&y)
            });
        }
        let mut codes: Vec<(String, u64)> = self.failure_codes.into_iter().collect();
        codes.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Graded {
            written: self.written,
            distribution: dist,
            grades: self.tally.properties(),
            parse_failures_by_reason: self.tally.failures(),
            api_failures_by_code: codes,
        }
    }
}

/// Write the output file from the state: every input row in order.
/// Returns the counts and what the grades look like.
pub fn write_output_file(
    store: &JobStore,
    spec: &CheckedSpec,
    plan: &PlanRecord,
    ui: &Ui,
) -> Result<Graded> {
    write_output_to(
        store,
        spec,
        plan,
        &spec.output_path,
        spec.output().format,
        ui,
    )
}

/// Same, to any path and format (`export`).
pub fn write_output_to(
    store: &JobStore,
    spec: &CheckedSpec,
    plan: &PlanRecord,
    path: &Path,
    format: Option<crate::spec::Format>,
    ui: &Ui,
) -> Result<Graded> {
    let format = output::format_for(path, format)?;
    // Never a worse output over a better one: outcomes the state lost
    // would turn graded rows into "not graded".
    if let Some(damage) = store.outcomes_damage()? {
        return Err(damage.into());
    }
    // Checked by the commands before any work too; this is the last line of
    // defence for every writer of the output.
    crate::protect::check_output(
        path,
        if path == spec.output_path {
            crate::protect::OutputFrom::Spec(&spec.file)
        } else {
            crate::protect::OutputFrom::Flag("--out")
        },
        spec,
        None,
        store.layout().root(),
    )?;
    let mut judge = Judge::new(spec)?;
    let added = AddedColumns::for_spec(spec);
    let sources: Vec<Source> = spec
        .inputs
        .iter()
        .map(|p| Source::new(p, spec.input().format))
        .collect::<Result<_, _>>()?;
    let prompt = crate::prompt::Prompt::load(spec)?;
    let builder = crate::plan::request_builder(spec, &prompt);
    // Rows whose request is no longer the planned one (the row was edited,
    // or the prompt files were): never paired with an answer to other text.
    let changed: std::cell::RefCell<Vec<String>> = Default::default();
    let changed_count = std::cell::Cell::new(0u64);
    let mut requests = store.requests(plan.generation);
    let id_column = spec.input().id.clone();
    let meter = ui.progress_rows(plan.rows, "writing the output");
    let result_of = |row: &crate::input::Row| {
        if row.number.is_multiple_of(4096) {
            meter.set_position(row.number);
        }
        let req = requests
            .next()
            .transpose()?
            .ok_or_else(|| input_changed(spec))?;
        let key = match &id_column {
            Some(c) => row.get(c).unwrap_or_default().to_string(),
            None => row.number.to_string(),
        };
        if req.row != row.number || req.key != key {
            return Err(input_changed(spec));
        }
        let now = crate::plan::row_fingerprint(&prompt, &builder, row);
        if now.as_deref() != Ok(req.fingerprint.as_str()) {
            changed_count.set(changed_count.get() + 1);
            if changed.borrow().len() < 5 {
                changed.borrow_mut().push(format!(
                    "row {} (id {key}, {})",
                    row.number,
                    crate::input::row_place(&sources, row)
                ));
            }
            return Ok(RowResult::default());
        }
        Ok(judge.row(store.outcome(&req.fingerprint)?))
    };
    let before_commit = || match changed_count.get() {
        0 => Ok(()),
        n => Err(rows_changed(spec, n, &changed.borrow())),
    };
    let written = output::write(
        &spec.file,
        &sources,
        path,
        format,
        &added,
        result_of,
        before_commit,
    )?;
    meter.finish_and_clear();
    let graded = judge.finish();
    debug_assert_eq!(graded.written, written);
    Ok(Graded { written, ..graded })
}

/// What the grades look like, from the state alone (no input files are
/// read): the same judgement as the output file's, for `report`.
pub fn grade_stats(store: &JobStore, spec: &CheckedSpec, plan: &PlanRecord) -> Result<Graded> {
    let mut judge = Judge::new(spec)?;
    for req in store.requests(plan.generation) {
        let req = req?;
        judge.row(store.outcome(&req.fingerprint)?);
    }
    Ok(judge.finish())
}

/// `n` rows whose request is not the planned one (`named`: the first few).
fn rows_changed(spec: &CheckedSpec, n: u64, named: &[String]) -> Error {
    let more = n.saturating_sub(named.len() as u64);
    Error::usage_with_hint(
        format!(
            "{n} row{} of job `{}` changed since the plan (the row's text, or a prompt file): {}{}; their answers are to other text, so no output was written",
            if n == 1 { "" } else { "s" },
            spec.name(),
            named.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        ),
        format!(
            "run `batchgrader apply {}` to plan again: only the changed rows are graded again, the others keep their answers",
            spec.file.display()
        ),
    )
}

fn input_changed(spec: &CheckedSpec) -> Error {
    Error::usage_with_hint(
        format!(
            "the input of job `{}` changed since it was planned: its rows no longer match the plan",
            spec.name()
        ),
        format!(
            "run `batchgrader apply {}` to plan the changed rows (rows already graded are kept)",
            spec.file.display()
        ),
    )
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
            simulated: false,
            message: None,
            receipt: Default::default(),
        };
        let clean = RunEnd::Finished { rows_failed: false };
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
            let failed = RunEnd::Finished { rows_failed: true };
            assert_eq!(Ending::Finished.run_end(&t), failed, "case {bad}");
        }
    }
}
