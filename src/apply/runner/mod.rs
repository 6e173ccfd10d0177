//! The shell of `apply`: reads the state and the clock, asks `decide` what
//! to do, drives the provider through the [`BatchBackend`] seam, and
//! records every transition before the next side effect (see `apply/mod.rs` for
//! the protocol). It holds no wire type and makes no decision of its own.
//!
//! `submit.rs` creates batches (and finds what an earlier create made),
//! `collect.rs` polls, fetches and merges results, `snapshot.rs` writes the
//! snapshot and the summary; this file holds the loop and the fault model.

mod collect;
mod snapshot;
mod submit;
mod twins;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::decide::{
    self, Action, Admission, RequestState, StatusVerdict, StepVerdict, Tally, UnitView,
};
use super::frame::CANCELLED;
use super::{ApplyOptions, Ending, RunFrame, Summary, kill_point};
use crate::chunking::{Item, Limits};
use crate::cost;
use crate::error::{Error, Result};
use crate::provider::bounded::{self, MAX_RESULT_LINE};
use crate::provider::watch::waiting_line;
use crate::provider::{
    BatchBackend, LineError, ProviderError, RemoteBatch, RemoteState, ResultLine, SubmitIdentity,
};
use crate::state::chunkfile::{ChunkWriter, sha256_of};
use crate::state::journal::LedgerEntry;
use crate::state::{
    self, FailureRecord, Layout, Outcome, Phase, ResultRecord, UnitRecord, custom_id,
};
use crate::status::{self, RunState, Snapshot, UnitStatus};

/// Everything one batch run needs: the frame every run shares, the
/// backend, and the loop's own state.
pub struct Runner<'a, B: BatchBackend> {
    frame: RunFrame<'a>,
    backend: &'a B,
    opts: ApplyOptions,
    /// Next status check per unit: (when, current interval).
    polls: HashMap<u32, (Instant, Duration)>,
    /// Requests by where they stand, as of the last merge.
    tally: Tally,
    /// Since when every provider call has failed (Unix seconds).
    outage_since: Option<u64>,
    /// When the outage was last reported in the event lines.
    outage_said: Option<u64>,
    /// Set once the halt policy has spoken: nothing more is submitted, the
    /// batches that were out are collected, then the run ends.
    halting: Option<String>,
    /// The long local step under way, and since when (for `status`).
    step: Option<(String, u64)>,
    /// The deadline's margin was reached: nothing more is submitted, the
    /// batches out were cancelled and are collected, then the direct lane
    /// takes the rows left.
    switching: bool,
    /// Batches made behind the job's back, found by this run.
    twins: twins::Twins,
    /// When the run last looked for twins between steps (Unix seconds,
    /// and the instant, for the pace).
    twins_looked: Option<(u64, Instant)>,
}

fn now_ms_since(start: Instant, t: Instant) -> u64 {
    t.saturating_duration_since(start).as_millis() as u64
}

impl<'a, B: BatchBackend> Runner<'a, B> {
    pub fn new(frame: RunFrame<'a>, backend: &'a B, opts: ApplyOptions) -> Self {
        Runner {
            frame,
            backend,
            opts,
            polls: HashMap::new(),
            tally: Tally::default(),
            outage_since: None,
            outage_said: None,
            halting: None,
            step: None,
            switching: false,
            twins: twins::Twins::new(),
            twins_looked: None,
        }
    }

    /// The deadline's margin is reached.
    fn deadline_due(&self) -> bool {
        self.opts.deadline.is_some_and(|d| d.due(state::now_secs()))
    }

    /// Give way to the direct lane: cancel the batches that are out (what
    /// they finished is collected, it was paid) and submit nothing more.
    async fn start_switch(&mut self, units: &mut [UnitRecord]) -> Result<()> {
        let out = units
            .iter()
            .filter(|u| matches!(u.phase, Phase::Creating | Phase::Submitted))
            .count();
        let what = match out {
            0 => "no batch is out".to_string(),
            1 => "cancelling the batch out and collecting what it finished".to_string(),
            n => format!("cancelling the {n} batches out and collecting what they finished"),
        };
        self.event(
            None,
            &format!("the deadline is near: {what}; the rows left go to the direct lane"),
        );
        self.switching = true;
        self.settle_creating(units).await?;
        let _unreached = self.cancel_in_flight(units).await;
        kill_point("deadline-cancelled");
        Ok(())
    }

    fn job(&self) -> &str {
        self.frame.job()
    }

    fn generation(&self) -> u64 {
        self.frame.plan.generation
    }

    fn layout(&self) -> &Layout {
        self.frame.layout()
    }

    fn interrupted(&self) -> bool {
        self.frame.interrupted()
    }

    /// Run the job until it is finished, detached, interrupted or halted.
    pub async fn run(&mut self) -> Result<(Ending, Summary)> {
        self.frame.begin();
        let mut units = self.ensure_units()?;
        // Size the outcome index for the whole job once, rather than grow it.
        self.frame.store.reserve_outcomes(self.frame.plan.rows)?;
        self.repair_outcomes(&mut units)?;
        if self.opts.retry.any() {
            self.set_step(&units, "looking for requests to send again");
            // A request in a batch that is out is not final; its unit's
            // merge decides what comes next.
            let mut busy = HashSet::new();
            for u in units.iter().filter(|u| u.phase != Phase::Merged) {
                busy.extend(unit_custom_ids(&self.layout().resolve(&u.file))?.in_order);
            }
            self.frame
                .grant_retries(self.opts.retry, &|id| busy.contains(id))?;
            self.step = None;
        }
        self.set_step(&units, "counting where the requests stand");
        self.tally = self.scan_tally()?;
        self.step = None;
        // A run killed between merging a chunk and writing its usage line
        // finishes that bookkeeping first.
        for u in units.iter_mut() {
            if u.phase == Phase::Merged && !u.ledger_written && u.given_up.is_none() {
                self.write_ledger(u)?;
                u.cleanup_pending = true;
            }
        }
        self.clean_pending(&mut units).await?;
        // A chunk given up by an earlier run is tried again, and a backoff's
        // clock counts only while a process is trying.
        let now = state::now_secs();
        for u in units.iter_mut() {
            if u.given_up.is_some() || u.backoff.is_some() {
                u.given_up = None;
                if let Some(b) = u.backoff.as_mut() {
                    b.since = now;
                    b.retry_at = now;
                }
                self.put(u)?;
            }
        }
        let untouched = units
            .iter()
            .all(|u| u.phase == Phase::Planned && u.attempt == 1);
        if let Some(reason) = self.frame.refuse_start(untouched) {
            return self.finish(Ending::Halted(reason)).await;
        }
        // After `batchgrader cancel`, collect what the cancelled batches
        // finished, but submit nothing new and retry nothing.
        let cancelled = self.frame.cancelled()?;
        loop {
            if self.interrupted() {
                return self.finish(Ending::Interrupted).await;
            }
            if !self.switching && !cancelled && self.halting.is_none() && self.deadline_due() {
                self.start_switch(&mut units).await?;
            }
            self.say_outage();
            self.write_status(&units, RunState::Running, None);
            let now = Instant::now();
            let views: Vec<UnitView> = units.iter().map(|u| self.view(u, now)).collect();
            let now_ms = now_ms_since(self.frame.started, now);
            let submit = !cancelled && self.halting.is_none() && !self.switching;
            let step = decide::step(
                &views,
                now_ms,
                Admission {
                    max_in_flight: self.frame.spec.run.max_batches_in_flight as usize,
                    token_budget: self.frame.spec.chunking().max_tokens,
                    submit,
                },
            );
            if let Some(why) = decide::stalled(&views, now_ms, submit, &step) {
                // A bug, not a fault of the provider or the input: say so
                // and stop, rather than hang. Every transition is recorded,
                // so the state is as good as after a Ctrl-C.
                self.event(None, &format!("internal error: {why}"));
                return Err(Error::runtime_with_hint(
                    format!("internal error: {why}"),
                    "the job's state is kept: `batchgrader resume` takes it up again; please report this, with the job folder's events.jsonl",
                ));
            }
            if cancelled && !step.collecting {
                return self.finish(Ending::Halted(CANCELLED.into())).await;
            }
            if self.switching && !step.collecting {
                // A chunk given up in this run may still hold a batch: the
                // direct lane must not answer its rows. The next run tries
                // it again (and collects it) before the switch goes on.
                let batch_out = units.iter().any(|u| {
                    matches!(
                        u.phase,
                        Phase::Creating | Phase::Submitted | Phase::Ended | Phase::Downloaded
                    )
                });
                return self
                    .finish(if batch_out {
                        Ending::Detached
                    } else if self.tally.pending == 0 {
                        Ending::Finished
                    } else {
                        Ending::Deadline
                    })
                    .await;
            }
            if let Some(reason) = self.halting.clone()
                && !step.collecting
            {
                return self.finish(Ending::Halted(reason)).await;
            }
            if step.all_merged {
                if let Some(reason) = self.halt_reason(&units)? {
                    return self.finish(Ending::Halted(reason)).await;
                }
                // Every request has a final outcome: nothing to retry, and
                // no need to read millions of outcomes to find that out.
                if self.tally.pending == 0 {
                    return self.finish(Ending::Finished).await;
                }
                self.set_step(&units, "looking for requests to retry");
                let retries = self.plan_retries(&units)?;
                self.step = None;
                if retries.is_empty() {
                    return self.finish(Ending::Finished).await;
                }
                units.extend(retries);
                continue;
            }
            if self.opts.detach && step.detach_done() {
                return self.finish(Ending::Detached).await;
            }
            if step.actions.is_empty() {
                // Never asleep for long: Ctrl-C, and a clock that jumps.
                let mut latest = now + Duration::from_secs(60);
                // Awake when the deadline's margin begins.
                if let Some(d) = self.opts.deadline
                    && !self.switching
                {
                    let secs = d.switch_at().saturating_sub(state::now_secs());
                    latest = latest.min(now + Duration::from_secs(secs));
                }
                let wake = step
                    .wake_at_ms
                    .and_then(|ms| self.frame.started.checked_add(Duration::from_millis(ms)))
                    .map_or(now + Duration::from_secs(1), |w| w.min(latest));
                self.sleep_until(wake).await;
                continue;
            }
            for action in step.actions {
                if self.interrupted() {
                    break;
                }
                // Halt decisions come before spending (a recovery may create).
                if self.halting.is_none()
                    && matches!(action, Action::Submit(_) | Action::Recover(_))
                    && let Some(reason) = self.halt_reason(&units)?
                {
                    self.start_halt(&mut units, reason).await?;
                    break;
                }
                let idx = units
                    .iter()
                    .position(|u| u.id == action.unit())
                    .expect("actions name known units");
                let mut unit = units[idx].clone();
                let flag = self.frame.interrupt_flag();
                let halting = self.halting.is_some() || self.switching;
                let waiting = self.show_waiting(&units);
                // Ctrl-C cuts a call short (a hung server, a long backoff):
                // dropping it is like a kill, which the protocol survives.
                let stopped = async move {
                    while !flag.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                };
                let step = async {
                    match action {
                        Action::Submit(_) => self.submit(&mut unit).await,
                        Action::Recover(_) if cancelled || halting => self.settle(&mut unit).await,
                        Action::Recover(_) => self.recover(&mut unit).await,
                        Action::Poll(_) => self.poll(&mut unit).await,
                        Action::Download(_) => self.download(&mut unit).await,
                        Action::Ingest(_) => self.ingest(&mut unit).await,
                    }
                };
                tokio::select! {
                    r = step => r?,
                    () = stopped => return self.finish(Ending::Interrupted).await,
                    () = waiting => {}
                }
                let merged = unit.phase == Phase::Merged && units[idx].phase != Phase::Merged;
                units[idx] = unit;
                self.look_for_twins(&units).await?;
                self.write_status(&units, RunState::Running, None);
                if merged
                    && self.halting.is_none()
                    && let Some(reason) = self.halt_reason(&units)?
                {
                    self.start_halt(&mut units, reason).await?;
                    break;
                }
            }
        }
    }

    /// Enter a long local step: `status` shows it while it lasts.
    fn set_step(&mut self, units: &[UnitRecord], step: &str) {
        self.step = Some((step.to_string(), state::now_secs()));
        self.write_status(units, RunState::Running, None);
    }

    /// Beside a step: once one of its calls has been out for a while, the
    /// live view and `status` say what the run is waiting for, every
    /// second, until the step ends (this future never ends by itself).
    fn show_waiting(&self, units: &[UnitRecord]) -> impl Future<Output = ()> + use<B> {
        const SHOWN_AFTER: Duration = Duration::from_secs(3);
        // Without a live table (CI, pipes), one plain line for a long wait.
        const SAID_AFTER: Duration = Duration::from_secs(30);
        let watch = self.backend.calls().cloned();
        let progress = self.frame.progress.clone();
        let layout = self.layout().clone();
        let plain = !self.frame.ui.tty;
        let mut snap = self.snapshot(units, RunState::Running, None, None);
        async move {
            let Some(watch) = watch else {
                std::future::pending::<()>().await;
                return;
            };
            let mut said = false;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let oldest = watch.oldest();
                if let Some(line) = waiting_line(oldest.as_ref(), SHOWN_AFTER) {
                    if plain && !said && oldest.is_some_and(|w| w.for_ >= SAID_AFTER) {
                        said = true;
                        progress.event(None, &line);
                    }
                    snap.message = Some(line);
                    snap.updated_at = state::now_secs();
                    progress.table(&snap);
                    let _ = status::write(&layout, &snap);
                }
            }
        }
    }

    fn halt_reason(&self, units: &[UnitRecord]) -> Result<Option<String>> {
        // A rehearsal's direct spend counts against the same budget.
        let spent: f64 =
            units.iter().map(|u| u.cost_usd).sum::<f64>() + self.frame.direct_spent_usd;
        Ok(decide::halt(
            &self.frame.policy(),
            &self.tally,
            spent,
            &decide::chunk_failures(units),
            &self.frame.quality(self.tally.settled())?,
        ))
    }

    fn view(&self, u: &UnitRecord, now: Instant) -> UnitView {
        let now_secs = state::now_secs();
        let at = |unix: u64| {
            let wait = unix.saturating_sub(now_secs);
            now_ms_since(self.frame.started, now + Duration::from_secs(wait))
        };
        UnitView {
            id: u.id,
            phase: u.phase,
            not_before_ms: u.not_before.map(at),
            next_poll_ms: self
                .polls
                .get(&u.id)
                .map(|(t, _)| now_ms_since(self.frame.started, *t)),
            parked_until_ms: u.backoff.as_ref().map(|b| at(b.retry_at)),
            given_up: u.given_up.is_some(),
            tokens: u.tokens,
        }
    }

    async fn sleep_until(&self, wake: Instant) {
        // Short slices, so Ctrl-C is honoured within a quarter second.
        while Instant::now() < wake && !self.interrupted() {
            let left = wake.saturating_duration_since(Instant::now());
            tokio::time::sleep(left.min(Duration::from_millis(250))).await;
        }
    }

    /// The plan's chunks become units on the first run of a plan generation.
    /// They are written one by one, so a run killed part way leaves some: any
    /// chunk without its unit gets one now (found by bench/chaos: a kill here
    /// left 22 of 40 chunks never submitted, and every resume then "finished"
    /// with their rows not graded).
    fn ensure_units(&mut self) -> Result<Vec<UnitRecord>> {
        let mut units = self.frame.store.units(self.generation())?;
        let have: HashSet<u32> = units.iter().map(|u| u.id).collect();
        for c in &self.frame.plan.chunks {
            if have.contains(&c.index) {
                continue;
            }
            if units.len() == 1 {
                kill_point("units");
            }
            let u = UnitRecord::planned(
                c.index,
                1,
                c.file.clone(),
                c.sha256.clone(),
                c.requests,
                c.bytes,
                c.tokens,
            );
            self.put(&u)?;
            units.push(u);
        }
        units.sort_by_key(|u| u.id);
        Ok(units)
    }

    fn put(&self, u: &UnitRecord) -> Result<()> {
        Ok(self.frame.store.put_unit(self.generation(), u)?)
    }

    fn identity(&self, u: &UnitRecord) -> SubmitIdentity {
        SubmitIdentity {
            job: self.job().to_string(),
            chunk: u.id,
            attempt: u.attempt,
            submit: u.creates,
            plan: self.frame.plan.plan_hash[..16].to_string(),
            intent_at: u.intent_at.unwrap_or(0),
            requests: u.requests,
        }
    }

    fn event(&self, unit: Option<u32>, msg: &str) {
        self.frame.event(unit, msg);
    }

    /// A unit's step succeeded: the provider is up and the unit's run of
    /// failures is over.
    fn answered(&mut self, u: &mut UnitRecord) {
        self.provider_up();
        u.backoff = None;
    }

    /// A call answered, though the unit's step is not done yet (a lookup
    /// before a create): the outage is over, the unit's failures go on.
    fn provider_up(&mut self) {
        self.outage_since = None;
        self.outage_said = None;
    }

    /// A step failed: park the unit, give it up, or stop the run.
    async fn step_failed(
        &mut self,
        u: &mut UnitRecord,
        step: &str,
        e: ProviderError,
    ) -> Result<()> {
        let now = state::now_secs();
        let verdict = decide::on_step_error(
            e.step_class(),
            step,
            &e.to_string(),
            u.backoff.as_ref(),
            now,
            self.frame.spec.run.give_up_after.as_secs(),
        );
        match verdict {
            StepVerdict::Stop => Err(e.into()),
            StepVerdict::Park(b) => {
                self.outage_since.get_or_insert(now);
                self.event(
                    Some(u.id),
                    &format!(
                        "{step} failed ({e}); retrying in {} ({} failure{} in a row)",
                        status::short_duration(b.retry_at.saturating_sub(now)),
                        b.failures,
                        if b.failures == 1 { "" } else { "s" }
                    ),
                );
                u.backoff = Some(b);
                self.put(u)
            }
            StepVerdict::GiveUp { reason } => {
                self.event(Some(u.id), &format!("giving up the chunk: {reason}"));
                self.give_up(u, reason).await
            }
        }
    }

    /// A unit whose steps kept failing becomes a failed chunk for this run:
    /// the halt policy counts it, the run goes on with the others and writes
    /// what they graded, and its rows come out not graded. Its state is
    /// kept (a batch it has out is paid for and not abandoned), so the next
    /// `resume` or `apply` tries it again; and while it has a batch out, a
    /// new plan is refused, so its rows are never sent twice.
    async fn give_up(&mut self, u: &mut UnitRecord, reason: String) -> Result<()> {
        u.given_up = Some(reason);
        self.put(u)
    }

    fn say_outage(&mut self) {
        let now = state::now_secs();
        if let Some(line) = status::outage_line(self.job(), self.outage_since, now)
            && self.outage_said.is_none_or(|t| now.saturating_sub(t) >= 60)
        {
            self.outage_said = Some(now);
            self.event(None, &line);
        }
    }

    /// The halt policy has spoken: nothing more is created, the batches that
    /// are out are asked to stop, and the loop goes on collecting what they
    /// did (it was paid for) until none is out; then the output is written.
    async fn start_halt(&mut self, units: &mut [UnitRecord], reason: String) -> Result<()> {
        self.event(
            None,
            &format!("halting: {reason}; collecting the batches that are out"),
        );
        self.settle_creating(units).await?;
        // Unreached ones are polled on, and asked again by `cancel`.
        let _unreached = self.cancel_in_flight(units).await;
        self.halting = Some(reason);
        Ok(())
    }
}

/// A batch state's label for people and the unit record.
fn state_label(s: &RemoteState) -> &str {
    match s {
        RemoteState::Running { label, .. }
        | RemoteState::Ended { label, .. }
        | RemoteState::Requeue { label, .. } => label,
    }
}

/// The custom ids a request file holds.
fn unit_custom_ids(path: &Path) -> Result<UnitIds> {
    let f = File::open(path).map_err(|e| Error::io("read", path, e))?;
    let mut ids = UnitIds::default();
    for line in BufReader::new(f).lines() {
        let line = line.map_err(|e| Error::io("read", path, e))?;
        if let Some(id) = line_custom_id(&line)
            && ids.set.insert(id.to_string())
        {
            ids.in_order.push(id.to_string());
        }
    }
    Ok(ids)
}

/// The custom ids of a unit's request file, once each.
#[derive(Default)]
struct UnitIds {
    /// In file order, which is row order: the rows' request records are
    /// then read one after another. Taken from the set's (random) order,
    /// each look-up read its records from a new place in the file, and
    /// ingest ran at a few MB/s.
    in_order: Vec<String>,
    set: HashSet<String>,
}

impl UnitIds {
    fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }

    fn len(&self) -> usize {
        self.in_order.len()
    }
}

/// The custom id of a request line we wrote (`{"custom_id":"r12",...`).
fn line_custom_id(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("{\"custom_id\":\"")?;
    rest.split('"').next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_ids_of_our_lines() {
        assert_eq!(
            line_custom_id(r#"{"custom_id":"r12","method":"POST"}"#),
            Some("r12")
        );
        assert_eq!(line_custom_id(r#"{"method":"POST"}"#), None);
    }
}
