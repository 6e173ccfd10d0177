//! The run frame: what every run does around its loop, whatever its lane.
//!
//! Both runners (batch in `runner/`, direct in `direct/`) open a run here,
//! count where the requests stand through the same judgement, ask the same
//! pre-flight questions (the budget, a `cancel`), send their events,
//! snapshots and ledger lines through the same plumbing, and end in the one
//! [`RunFrame::finish`], whose decisions ([`decide::closing`]) are pure and
//! table-tested. A lane keeps only its loop and what only it knows (its
//! snapshot's own part, its closing words).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use super::decide::{self, Closing, HaltPolicy, RequestState, Tally};
use super::throughput::Throughput;
use super::{Ending, Graded, Progress, RunEnd, Summary, kill_point, write_output_file};
use crate::answer;
use crate::error::{Error, Result};
use crate::provider::bounded::{MAX_EVENT, clean_text};
use crate::spec::CheckedSpec;
use crate::state::journal::{self, LedgerEntry};
use crate::state::{self, FailureRecord, JobStore, Layout, Outcome, PlanRecord};
use crate::status::{self, RunState, Snapshot};
use crate::ui::Ui;

/// Why a run that found the job cancelled stops (both lanes say the same;
/// `status` knows a cancel by `status::CANCELLED_BY` in it).
pub const CANCELLED: &str =
    "the job was cancelled with `batchgrader cancel`; `batchgrader apply SPEC` starts it again";

/// One run of one job, whatever its lane.
pub struct RunFrame<'a> {
    pub store: &'a JobStore,
    pub spec: &'a CheckedSpec,
    pub plan: &'a PlanRecord,
    pub ui: &'a Ui,
    /// Shared with the waiting line that runs beside a slow call.
    pub progress: Rc<Progress>,
    interrupted: Arc<AtomicBool>,
    /// The answers are the simulated provider's.
    pub simulated: bool,
    pub started: Instant,
    pub started_at: u64,
    /// The one judgement of an answer: with an answer schema, an answer
    /// that breaks it is a parse failure for the halt policy as for the output.
    pub parser: answer::Parser,
    /// Bytes and time per local step, said at the end of the run.
    pub throughput: RefCell<Throughput>,
    /// The pre-flight refused the start: nothing was sent, so no output
    /// (a file of "not graded" rows) may replace an earlier one.
    refused_start: bool,
    /// The quality gate's watch over the gold rows (`halt.min_kappa`).
    quality: RefCell<Option<super::quality::QualityWatch>>,
    /// A rehearsal (`apply --sample`): its rows go to the sample file, and
    /// the job's output is not written.
    rehearsal: Option<SampleFile>,
    /// What the job's direct runs (a rehearsal) spent, from the ledger: the
    /// batch lane's budget counts it beside its own batches.
    pub direct_spent_usd: f64,
    /// The deadline the job's first `apply` fixed, shown in every snapshot.
    pub deadline: Option<crate::deadline::Deadline>,
}

/// Where a rehearsal writes its rows, and which rows (by row number).
#[derive(Debug, Clone)]
pub struct SampleFile {
    pub path: std::path::PathBuf,
    pub rows: std::collections::BTreeSet<u64>,
}

impl<'a> RunFrame<'a> {
    /// The frame of a run (or of `cancel`, which drives the backend too).
    pub fn open(
        store: &'a JobStore,
        spec: &'a CheckedSpec,
        plan: &'a PlanRecord,
        ui: &'a Ui,
        interrupted: Arc<AtomicBool>,
        simulated: bool,
    ) -> Result<Self> {
        let parser = answer::Parser::for_spec(spec).map_err(Error::usage)?;
        Ok(RunFrame {
            store,
            spec,
            plan,
            ui,
            progress: Rc::new(Progress::new(*ui)),
            interrupted,
            simulated,
            started: Instant::now(),
            started_at: state::now_secs(),
            parser,
            throughput: RefCell::default(),
            refused_start: false,
            quality: RefCell::new(super::quality::QualityWatch::load(store, spec, plan)?),
            rehearsal: None,
            deadline: spec
                .run
                .deadline
                .as_ref()
                .and_then(|_| store.fixed_deadline().ok().flatten())
                .map(|f| f.deadline),
            direct_spent_usd: std::fs::read_to_string(store.layout().ledger()).map_or(0.0, |t| {
                crate::costs::direct_spend(&crate::costs::entries_of(&t), spec.name()).cost_usd
            }),
        })
    }

    /// This run is a rehearsal that writes `sample` instead of the output.
    pub fn rehearsing(mut self, sample: SampleFile) -> Self {
        self.rehearsal = Some(sample);
        self
    }

    pub fn is_rehearsal(&self) -> bool {
        self.rehearsal.is_some()
    }

    /// The quality gate's verdict now (`settled`: requests with a final
    /// outcome; nothing is read again while it stays the same).
    pub fn quality(&self, settled: u64) -> Result<decide::GateCheck> {
        match self.quality.borrow_mut().as_mut() {
            None => Ok(decide::GateCheck::NotJudged("no quality gate".into())),
            Some(w) => w.check(self.store, &self.parser, settled),
        }
    }

    /// A run begins: its events file marks the start.
    pub fn begin(&self) {
        journal::start_run(&self.layout().events());
    }

    pub fn job(&self) -> &str {
        self.spec.name()
    }

    pub fn layout(&self) -> &Layout {
        self.store.layout()
    }

    pub fn policy(&self) -> HaltPolicy {
        self.spec.run.halt
    }

    /// The provider's name in the ledger and messages.
    pub fn provider(&self) -> &'static str {
        self.spec.endpoint.provider_name()
    }

    pub fn interrupted(&self) -> bool {
        self.interrupted.load(Ordering::SeqCst)
    }

    pub fn interrupt_flag(&self) -> Arc<AtomicBool> {
        self.interrupted.clone()
    }

    /// Where one request stands, from its latest outcome.
    pub fn request_state(&self, outcome: Option<Outcome>) -> RequestState {
        request_state(outcome, &self.parser)
    }

    /// Where every request of the plan stands (one pass over the records).
    pub fn tally(&self) -> Result<Tally> {
        tally_with(self.store, &self.parser, self.spec, self.plan.generation)
    }

    /// `--retry-failed`, `--retry-parse-failures`: give every request of
    /// the plan whose last outcome `decide::grant_retry` names a fresh set
    /// of attempts, by recording `decide::granted` for it (one fsynced
    /// append) before anything is sent. From then on the request is a
    /// retry like any other, in either lane, and a kill at any point leaves
    /// it to the next run: once granted it is no longer final, so it is sent
    /// once whether or not the flag is given again. `busy` names the custom
    /// ids the lane has out (a batch not merged): never granted. Returns how
    /// many requests were granted.
    pub fn grant_retries(
        &self,
        asked: decide::RetryAsked,
        busy: &dyn Fn(&str) -> bool,
    ) -> Result<u64> {
        if !asked.any() {
            return Ok(0);
        }
        // A cancelled job sends nothing on `resume`: a grant would only
        // turn its failures into rows "to be sent again" that never are.
        if self.cancelled()? {
            self.event(
                None,
                "the job was cancelled: nothing is sent again; `batchgrader apply SPEC --retry-failed` starts it again",
            );
            return Ok(0);
        }
        let max_attempts = self.spec.run.max_attempts;
        let meter = self
            .ui
            .progress_rows(self.plan.rows, "looking for requests to send again");
        let mut entries: Vec<(String, Outcome)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for r in self.store.requests(self.plan.generation) {
            let r = r?;
            if r.row.is_multiple_of(4096) {
                meter.set_position(r.row);
            }
            if r.seq.is_none() || busy(&state::custom_id(r.row)) {
                continue;
            }
            // A parsed answer is never sent again: the index says a
            // success without reading its line.
            if !asked.parse_failures
                && self
                    .store
                    .succeeded(crate::plan::fingerprint_bits(&r.fingerprint))?
            {
                continue;
            }
            let state = self.request_state(self.store.outcome(&r.fingerprint)?);
            // Rows with the same request share one outcome: one grant.
            if decide::grant_retry(state, max_attempts, asked) && seen.insert(r.fingerprint.clone())
            {
                entries.push((r.fingerprint, Outcome::Failure(decide::granted())));
            }
        }
        meter.finish_and_clear();
        let what = match (asked.failed, asked.parse_failures) {
            (true, true) => "that failed or did not parse",
            (true, false) => "that failed",
            _ => "whose answer did not parse",
        };
        if entries.is_empty() {
            self.event(None, &format!("no request {what}: nothing to send again"));
            return Ok(0);
        }
        self.store.add_outcomes(&entries)?;
        let n = entries.len() as u64;
        self.event(
            None,
            &format!(
                "{} request{} {what} will be sent again, with {} attempt{} each",
                n,
                if n == 1 { "" } else { "s" },
                max_attempts,
                if max_attempts == 1 { "" } else { "s" },
            ),
        );
        kill_point("retry-granted");
        Ok(n)
    }

    /// The budget before anything is sent: `Some(reason)` refuses the
    /// start, and the run's finish then leaves every file as it was.
    /// `untouched`: nothing of this plan was sent yet.
    pub fn refuse_start(&mut self, untouched: bool) -> Option<String> {
        let estimate = self.plan.estimate.as_ref();
        let reason = decide::halt_before_start(
            &self.policy(),
            estimate.and_then(|e| e.high),
            estimate.is_some(),
            untouched,
        )?;
        self.refused_start = true;
        Some(reason)
    }

    /// `batchgrader cancel` was run for this job.
    pub fn cancelled(&self) -> Result<bool> {
        Ok(self.store.cancelled_at()?.is_some())
    }

    /// One thing that happened: on the terminal and in `events.jsonl`.
    pub fn event(&self, unit: Option<u32>, msg: &str) {
        // Events quote servers (errors, ids, statuses): the last guard
        // before the terminal and the log.
        let msg = clean_text(msg, MAX_EVENT);
        self.progress.event(unit, &msg);
        journal::append_event(&self.layout().events(), unit, &msg);
    }

    /// Show a snapshot and write it for `status`; a failed write is said,
    /// not fatal (the next one may work, and the state is in sled).
    pub fn show(&self, snap: &Snapshot) {
        self.progress.table(snap);
        if let Err(e) = status::write(self.layout(), snap) {
            self.ui.warn(&format!("cannot write status.json: {e}"));
        }
    }

    /// A ledger line, at most once per id. A line that cannot be written
    /// stops the run in either lane: `costs` would otherwise miss spend.
    pub fn record_usage(&self, entry: &LedgerEntry) -> Result<()> {
        let ledger = self.layout().ledger();
        journal::record_usage_once(&ledger, entry).map_err(|e| Error::io("append to", &ledger, e))
    }

    /// A ledger entry of this run's job, model and provider.
    pub fn ledger_entry<'e>(&'e self, batch_id: &'e str) -> LedgerEntry<'e> {
        LedgerEntry {
            ts: state::now_secs(),
            job: self.job(),
            batch_id,
            provider: self.provider(),
            model: &self.plan.model,
            input_tokens: 0,
            output_tokens: 0,
            cost_usd: 0.0,
            standard_cost_usd: 0.0,
            simulated: self.simulated,
            cache_write_tokens: 0,
            cache_read_tokens: 0,
            kind: None,
            reasoning_tokens: 0,
            cache_saved_usd: None,
        }
    }

    /// What the prompt cache saved on `write` and `read` tokens at the
    /// plan's prices (batch, or standard in a direct plan); `None` with no
    /// cache tokens or no price.
    pub fn cache_saved(&self, write: u64, read: u64) -> Option<f64> {
        self.plan
            .price
            .as_ref()
            .filter(|_| write + read > 0)
            .map(|p| crate::cost::cache_saving(p, write, read, true))
    }

    /// End the run: write the output when [`decide::closing`] says so, the
    /// final snapshot, and the summary. `snapshot` is the lane's own
    /// (state, message, output path); `message` its closing words.
    pub fn finish(
        &self,
        ending: Ending,
        message: Option<String>,
        mut snapshot: impl FnMut(RunState, Option<String>, Option<String>) -> Snapshot,
    ) -> Result<(Ending, Summary)> {
        let Closing {
            write_output,
            mut state,
        } = decide::closing(&ending, self.refused_start);
        let mut graded = Graded::default();
        let written_to = match &self.rehearsal {
            None => &self.spec.output_path,
            Some(s) => &s.path,
        };
        if write_output {
            self.event(
                None,
                &format!("writing the output to {}", written_to.display()),
            );
            // `status` says the process is busy writing, not hung.
            let mut busy = snapshot(RunState::Running, None, None);
            busy.step = Some(("writing the output".to_string(), state::now_secs()));
            self.show(&busy);
            let began = Instant::now();
            graded = match &self.rehearsal {
                None => write_output_file(self.store, self.spec, self.plan, self.ui)?,
                Some(s) => super::write_output_to(
                    self.store,
                    self.spec,
                    self.plan,
                    &s.path,
                    self.spec.output().format,
                    super::Rows::Only(&s.rows),
                    self.ui,
                )?,
            };
            let bytes = std::fs::metadata(written_to).map_or(0, |m| m.len());
            self.throughput
                .borrow_mut()
                .add("output", bytes, began.elapsed());
            kill_point("output");
        }
        // A rehearsal leaves the job planned: the rest is still to grade.
        let mut message = message;
        if let Some(s) = &self.rehearsal
            && state == RunState::Finished
        {
            state = RunState::Planned;
            message = Some(format!(
                "rehearsed on {} row{} (`apply --sample`), written to {}; `batchgrader apply SPEC` grades the rest",
                s.rows.len(),
                if s.rows.len() == 1 { "" } else { "s" },
                s.path.display()
            ));
        }
        // Absolute and free of `..`: `apply specs/x.yaml` (a path relative
        // to the spec) and `resume` (the spec saved whole) say the same.
        let out_path =
            write_output.then(|| crate::registry::normal(written_to).display().to_string());
        // The gate at the end is judged on the output's agreement.
        let gate = self
            .spec
            .run
            .halt
            .gate
            .filter(|_| write_output)
            .map(|g| decide::quality_gate(&g, &decide::gate_numbers(&graded.agreement)));
        // `status` names the job's output, which a rehearsal does not write.
        let snap_out = out_path.clone().filter(|_| self.rehearsal.is_none());
        let mut snap = snapshot(state, message.clone(), snap_out);
        if write_output {
            snap.quality = Some(status::Quality {
                agreement: graded.agreement.clone(),
                failures: graded.failures.clone(),
                gate: gate.clone(),
            });
        }
        self.progress.clear();
        status::write(self.layout(), &snap)
            .map_err(|e| Error::io("write", self.layout().status(), e))?;
        let line = self.throughput.borrow().line();
        if let Some(line) = line {
            // Developer figures (bench/scale reads them from a run's log):
            // always in events.jsonl, on stderr only in plain output (CI,
            // logs), never in the live view a person watches.
            if self.ui.tty {
                journal::append_event(&self.layout().events(), None, &line);
            } else {
                self.event(None, &line);
            }
        }
        let summary = Summary::of(RunEnd {
            job: self.job(),
            ending: &ending,
            plan: self.plan,
            graded,
            snap: &snap,
            output_path: out_path,
            simulated: self.simulated,
            message,
            gate,
        });
        Ok((ending, summary))
    }
}

/// A running job's snapshot, filled alike by the batch and the direct runner:
/// what the plan says (rows, model, estimate) and what the run has done.
/// Each runner adds what is its own with struct update syntax (units,
/// receipt, the direct-mode view, the outage, the step); those start empty.
pub fn snapshot_of(
    job: &str,
    plan: &PlanRecord,
    tally: &Tally,
    state: RunState,
    started_at: u64,
    spent_usd: f64,
) -> Snapshot {
    Snapshot {
        job: job.to_string(),
        state,
        pid: (state == RunState::Running).then(std::process::id),
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
        quality: None,
        deadline: None,
    }
}

/// Where every request of plan `generation` stands, from the outcomes
/// recorded so far (one pass over the request records).
pub fn tally_of(store: &JobStore, spec: &CheckedSpec, generation: u64) -> Result<Tally> {
    let parser = answer::Parser::for_spec(spec).map_err(Error::usage)?;
    tally_with(store, &parser, spec, generation)
}

fn tally_with(
    store: &JobStore,
    parser: &answer::Parser,
    spec: &CheckedSpec,
    generation: u64,
) -> Result<Tally> {
    let max_attempts = spec.run.max_attempts;
    let mut tally = Tally::default();
    for r in store.requests(generation) {
        let r = r?;
        if r.seq.is_none() {
            continue;
        }
        tally.add(
            request_state(store.outcome(&r.fingerprint)?, parser),
            max_attempts,
        );
    }
    Ok(tally)
}

/// Where a request stands, from its latest outcome.
pub fn request_state(outcome: Option<Outcome>, parser: &answer::Parser) -> RequestState {
    match outcome {
        Some(Outcome::Success(res)) => RequestState::Succeeded {
            parsed: parser.parse(&res.answer).is_ok(),
        },
        Some(Outcome::Failure(f)) => failed_state(&f),
        None => RequestState::Pending,
    }
}

pub fn failed_state(f: &FailureRecord) -> RequestState {
    RequestState::Failed {
        retryable: f.retryable,
        attempts: f.attempts,
        runs: f.runs(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_run_stopped_by_a_cancel_says_so_in_the_words_status_knows() {
        assert!(super::CANCELLED.contains(crate::status::CANCELLED_BY));
    }
}
