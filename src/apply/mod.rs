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

pub mod answer;
pub mod decide;
mod progress;
mod runner;

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::input::Source;
use crate::output::{self, AddedColumns, RowResult, RowStatus, Written};
use crate::report::Ui;
use crate::spec::{CheckedSpec, ParseMode};
use crate::state::{JobStore, Outcome, PlanRecord};
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
    pub simulated: bool,
    pub message: Option<String>,
    /// Paid at batch prices, what standard prices would have cost, the difference.
    pub receipt: crate::status::Receipt,
}

/// Where the process may be killed on purpose, for the crash-safety tests.
/// `BATCHGRADER_TEST_KILL_AT=<point>` sends SIGKILL to this process right
/// after that step; nothing else reads it.
fn kill_point(name: &str) {
    if std::env::var("BATCHGRADER_TEST_KILL_AT").is_ok_and(|v| v == name) {
        // SAFETY: kill(2) on our own pid with SIGKILL has no memory effects.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

/// Write the output file from the state: every input row in order.
/// Returns the counts and, for number/label parses, the value distribution.
pub fn write_output_file(
    store: &JobStore,
    spec: &CheckedSpec,
    plan: &PlanRecord,
    ui: &Ui,
) -> Result<(Written, Vec<(String, u64)>)> {
    write_output_to(
        store,
        spec,
        plan,
        &spec.output_path,
        spec.spec.output.format,
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
) -> Result<(Written, Vec<(String, u64)>)> {
    let format = output::format_for(path, format)?;
    let o = &spec.spec.output;
    let parser = answer::Parser::new(
        o.parse,
        o.labels.as_deref().unwrap_or_default(),
        o.pattern.as_deref(),
    )
    .map_err(Error::usage)?;
    let added = AddedColumns {
        field: o.field.clone(),
        raw: o.parse != ParseMode::Text,
        usage: o.include_usage,
    };
    let sources: Vec<Source> = spec
        .inputs
        .iter()
        .map(|p| Source::new(p, spec.spec.input.format))
        .collect::<Result<_, _>>()?;
    let mut requests = store.requests(plan.generation);
    let mut dist: BTreeMap<String, u64> = BTreeMap::new();
    let id_column = spec.spec.input.id.clone();
    let meter = ui.progress_rows(plan.rows, "writing the output");
    let written = output::write(&sources, path, format, &added, |row| {
        if row.number % 4096 == 0 {
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
        let outcome = store.outcome(&req.fingerprint)?;
        if let Some(Outcome::Success(res)) = outcome {
            let mut r = RowResult {
                raw: res.answer.clone(),
                input_tokens: Some(res.input_tokens),
                output_tokens: Some(res.output_tokens),
                ..RowResult::default()
            };
            match parser.parse(&res.answer) {
                Ok(v) => {
                    if matches!(o.parse, ParseMode::Number | ParseMode::Label) {
                        *dist.entry(v.clone()).or_default() += 1;
                    }
                    r.value = v;
                    r.status = RowStatus::Ok;
                }
                Err(why) => {
                    r.status = RowStatus::ParseError;
                    r.error = why;
                }
            }
            return Ok(r);
        }
        if let Some(Outcome::Failure(f)) = outcome {
            return Ok(RowResult {
                status: RowStatus::Failed,
                error: format!("{}: {}", f.code, f.message),
                ..RowResult::default()
            });
        }
        Ok(RowResult::default())
    })?;
    meter.finish_and_clear();
    let mut dist: Vec<(String, u64)> = dist.into_iter().collect();
    if o.parse == ParseMode::Number {
        dist.sort_by(|a, b| {
            let x: f64 = a.0.parse().unwrap_or(f64::MAX);
            let y: f64 = b.0.parse().unwrap_or(f64::MAX);
            x.total_cmp(&y)
        });
    }
    Ok((written, dist))
}

fn input_changed(spec: &CheckedSpec) -> Error {
    Error::usage_with_hint(
        format!(
            "the input of job `{}` changed since it was planned: its rows no longer match the plan",
            spec.spec.name
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
