//! The shell of `apply`: reads the state and the clock, asks `decide` what
//! to do, drives the provider through the [`BatchBackend`] seam, and
//! records every transition before the next side effect (see `mod.rs` for
//! the protocol). It holds no wire type and makes no decision of its own.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::decide::{
    self, Action, Admission, HaltPolicy, RequestState, StatusVerdict, StepVerdict, Tally, UnitView,
};
use super::{ApplyOptions, Ending, Progress, Summary, answer, kill_point, write_output_file};
use crate::chunking::{Item, Limits};
use crate::cost;
use crate::error::{Error, Result};
use crate::provider::{
    BatchBackend, ProviderError, RemoteBatch, RemoteState, ResultLine, SubmitIdentity,
};
use crate::report::Ui;
use crate::spec::CheckedSpec;
use crate::state::chunkfile::{ChunkWriter, sha256_of};
use crate::state::journal::{self, LedgerEntry};
use crate::state::{
    self, FailureRecord, JobStore, Layout, Outcome, Phase, PlanRecord, ResultRecord, UnitRecord,
    custom_id,
};
use crate::status::{self, RunState, Snapshot, UnitStatus};

/// Everything one run needs.
pub struct Runner<'a, B: BatchBackend> {
    store: &'a JobStore,
    spec: &'a CheckedSpec,
    plan: &'a PlanRecord,
    backend: &'a B,
    ui: &'a Ui,
    opts: ApplyOptions,
    interrupted: Arc<AtomicBool>,
    simulated: bool,
    progress: Progress,
    /// Next status check per unit: (when, current interval).
    polls: HashMap<u32, (Instant, Duration)>,
    /// Requests by where they stand, as of the last merge.
    tally: Tally,
    /// Since when every provider call has failed (Unix seconds).
    outage_since: Option<u64>,
    /// When the outage was last reported in the event lines.
    outage_said: Option<u64>,
    started: Instant,
    started_at: u64,
}

fn now_ms_since(start: Instant, t: Instant) -> u64 {
    t.saturating_duration_since(start).as_millis() as u64
}

impl<'a, B: BatchBackend> Runner<'a, B> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: &'a JobStore,
        spec: &'a CheckedSpec,
        plan: &'a PlanRecord,
        backend: &'a B,
        ui: &'a Ui,
        opts: ApplyOptions,
        interrupted: Arc<AtomicBool>,
        simulated: bool,
    ) -> Self {
        Runner {
            store,
            spec,
            plan,
            backend,
            ui,
            opts,
            interrupted,
            simulated,
            progress: Progress::new(*ui),
            polls: HashMap::new(),
            tally: Tally::default(),
            outage_since: None,
            outage_said: None,
            started: Instant::now(),
            started_at: state::now_secs(),
        }
    }

    fn job(&self) -> &str {
        &self.spec.spec.name
    }

    fn generation(&self) -> u64 {
        self.plan.generation
    }

    fn layout(&self) -> &Layout {
        self.store.layout()
    }

    fn policy(&self) -> HaltPolicy {
        let h = &self.spec.spec.halt;
        HaltPolicy {
            on_chunk_failure: h.on_chunk_failure,
            max_failure_rate: self.spec.max_failure_rate,
            max_cost_usd: h.max_cost_usd,
        }
    }

    fn interrupted(&self) -> bool {
        self.interrupted.load(Ordering::SeqCst)
    }

    /// Run the job until it is finished, detached, interrupted or halted.
    pub async fn run(&mut self) -> Result<(Ending, Summary)> {
        journal::start_run(&self.layout().events());
        let mut units = self.ensure_units()?;
        self.tally = self.scan_tally()?;
        // A run killed between merging a chunk and writing its usage line
        // finishes that bookkeeping first.
        for u in units.iter_mut() {
            if u.phase == Phase::Merged && !u.ledger_written && u.given_up.is_none() {
                self.write_ledger(u)?;
                u.cleanup_pending = true;
            }
        }
        self.clean_pending(&mut units).await?;
        let untouched = units
            .iter()
            .all(|u| u.phase == Phase::Planned && u.attempt == 1);
        let estimate = self.plan.estimate.as_ref();
        if let Some(reason) = decide::halt_before_start(
            &self.policy(),
            estimate.and_then(|e| e.high),
            estimate.is_some(),
            untouched,
        ) {
            return self.finish(Ending::Halted(reason)).await;
        }
        // After `batchgrader cancel`, collect what the cancelled batches
        // finished, but submit nothing new and retry nothing.
        let cancelled = self.store.cancelled_at()?.is_some();
        loop {
            if self.interrupted() {
                return self.finish(Ending::Interrupted).await;
            }
            self.say_outage();
            self.write_status(&units, RunState::Running, None);
            let now = Instant::now();
            let views: Vec<UnitView> = units.iter().map(|u| self.view(u, now)).collect();
            let step = decide::step(
                &views,
                now_ms_since(self.started, now),
                Admission {
                    max_in_flight: self.spec.spec.concurrency.max_batches_in_flight as usize,
                    token_budget: self.spec.spec.chunking.max_tokens,
                    submit: !cancelled,
                },
            );
            let collecting = units.iter().any(|u| {
                matches!(
                    u.phase,
                    Phase::Creating | Phase::Submitted | Phase::Ended | Phase::Downloaded
                )
            });
            if cancelled && !collecting {
                return self
                    .finish(Ending::Halted(
                        "the job was cancelled with `batchgrader cancel`; `batchgrader apply SPEC` starts it again".into(),
                    ))
                    .await;
            }
            if step.all_merged {
                if let Some(reason) = self.halt_reason(&units) {
                    return self.finish(Ending::Halted(reason)).await;
                }
                let retries = self.plan_retries(&units)?;
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
                let wake = step
                    .wake_at_ms
                    .map(|ms| self.started + Duration::from_millis(ms))
                    .unwrap_or(now + Duration::from_secs(1));
                self.sleep_until(wake).await;
                continue;
            }
            for action in step.actions {
                if self.interrupted() {
                    break;
                }
                // Halt decisions come before spending (a recovery may create).
                if matches!(action, Action::Submit(_) | Action::Recover(_))
                    && let Some(reason) = self.halt_reason(&units)
                {
                    return self.halt(&mut units, reason).await;
                }
                let idx = units
                    .iter()
                    .position(|u| u.id == action.unit())
                    .expect("actions name known units");
                let mut unit = units[idx].clone();
                match action {
                    Action::Submit(_) => self.submit(&mut unit).await?,
                    Action::Recover(_) => self.recover(&mut unit).await?,
                    Action::Poll(_) => self.poll(&mut unit).await?,
                    Action::Download(_) => self.download(&mut unit).await?,
                    Action::Ingest(_) => self.ingest(&mut unit).await?,
                }
                let merged = unit.phase == Phase::Merged && units[idx].phase != Phase::Merged;
                units[idx] = unit;
                self.write_status(&units, RunState::Running, None);
                if merged && let Some(reason) = self.halt_reason(&units) {
                    return self.halt(&mut units, reason).await;
                }
            }
        }
    }

    fn halt_reason(&self, units: &[UnitRecord]) -> Option<String> {
        let spent: f64 = units.iter().map(|u| u.cost_usd).sum();
        decide::halt(
            &self.policy(),
            &self.tally,
            spent,
            &decide::chunk_failures(units),
        )
    }

    fn view(&self, u: &UnitRecord, now: Instant) -> UnitView {
        let now_secs = state::now_secs();
        let at = |unix: u64| {
            let wait = unix.saturating_sub(now_secs);
            now_ms_since(self.started, now + Duration::from_secs(wait))
        };
        UnitView {
            id: u.id,
            phase: u.phase,
            not_before_ms: u.not_before.map(at),
            next_poll_ms: self
                .polls
                .get(&u.id)
                .map(|(t, _)| now_ms_since(self.started, *t)),
            parked_until_ms: u.backoff.as_ref().map(|b| at(b.retry_at)),
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
    fn ensure_units(&mut self) -> Result<Vec<UnitRecord>> {
        let existing = self.store.units(self.generation())?;
        if !existing.is_empty() {
            return Ok(existing);
        }
        let mut units = Vec::with_capacity(self.plan.chunks.len());
        for c in &self.plan.chunks {
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
        Ok(units)
    }

    fn put(&self, u: &UnitRecord) -> Result<()> {
        Ok(self.store.put_unit(self.generation(), u)?)
    }

    fn identity(&self, u: &UnitRecord) -> SubmitIdentity {
        SubmitIdentity {
            job: self.job().to_string(),
            chunk: u.id,
            attempt: u.attempt,
            submit: u.creates,
            plan: self.plan.plan_hash[..16].to_string(),
            intent_at: u.intent_at.unwrap_or(0),
        }
    }

    fn event(&self, unit: Option<u32>, msg: &str) {
        self.progress.event(unit, msg);
        journal::append_event(&self.layout().events(), unit, msg);
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
            self.spec.give_up_after.as_secs(),
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

    /// A unit whose steps kept failing becomes a failed chunk: its requests
    /// fail finally (a later `apply` plans them again), and a batch that may
    /// still run is asked to stop, so nothing is paid for unseen.
    async fn give_up(&mut self, u: &mut UnitRecord, reason: String) -> Result<()> {
        let ids = unit_custom_ids(&self.layout().resolve(&u.file))?;
        let mut failures = Vec::new();
        for id in &ids {
            let Some(req) = self.request_of(id)? else {
                continue;
            };
            failures.push((
                req.fingerprint,
                FailureRecord {
                    code: "provider_unavailable".into(),
                    message: format!("chunk {} was given up: {reason}", u.id),
                    retryable: false,
                    attempts: u.attempt,
                    ran: false,
                    runs: None,
                },
            ));
        }
        if u.phase == Phase::Submitted
            && let Some(id) = u.batch_id.clone()
        {
            // Best effort: the provider is failing anyway.
            if let Err(e) = self.backend.cancel(&id).await {
                self.event(Some(u.id), &format!("could not cancel batch {id}: {e}"));
            }
        }
        u.failed = failures.len() as u64;
        u.given_up = Some(reason);
        u.backoff = None;
        u.phase = Phase::Merged;
        self.store
            .merge_outcomes(&[], &failures, u, self.generation())?;
        // Rare enough to count again from the store.
        self.tally = self.scan_tally()?;
        Ok(())
    }

    fn say_outage(&mut self) {
        let now = state::now_secs();
        if let Some(line) = status::outage_line(self.outage_since, now)
            && self.outage_said.is_none_or(|t| now.saturating_sub(t) >= 60)
        {
            self.outage_said = Some(now);
            self.event(None, &line);
        }
    }

    /// Stage (if not yet) and create the batch.
    async fn submit(&mut self, u: &mut UnitRecord) -> Result<()> {
        if u.phase == Phase::Planned {
            let path = self.layout().resolve(&u.file);
            verify_sha256(&path, &u.sha256)?;
            let name = format!("{}.chunk-{}.attempt-{}.jsonl", self.job(), u.id, u.attempt);
            match self.backend.stage(&path, &name).await {
                Ok(staged) => {
                    self.answered(u);
                    u.file_id = staged;
                    u.phase = Phase::Uploaded;
                    self.put(u)?;
                    match &u.file_id {
                        Some(id) => self.event(Some(u.id), &format!("uploaded as {id}")),
                        None => self.event(Some(u.id), "staged"),
                    }
                    kill_point("upload");
                }
                Err(e) => return self.step_failed(u, "upload", e).await,
            }
        }
        u.not_before = None;
        u.creates += 1;
        u.intent_at = Some(state::now_secs());
        u.phase = Phase::Creating;
        self.put(u)?;
        kill_point("create-intent");
        self.create(u).await
    }

    /// Create the batch of a unit whose intent is recorded.
    async fn create(&mut self, u: &mut UnitRecord) -> Result<()> {
        let path = self.layout().resolve(&u.file);
        let identity = self.identity(u);
        match self
            .backend
            .submit(u.file_id.as_deref(), &path, &identity)
            .await
        {
            Ok(batch) => {
                // The batch exists but is not recorded: the case `recover` is for.
                kill_point("create-sent");
                self.answered(u);
                self.adopt(u, &batch)?;
                self.event(Some(u.id), &format!("submitted as batch {}", batch.id));
                kill_point("create");
                Ok(())
            }
            // The unit stays `creating`: whatever comes next looks for the
            // batch before creating another (the SDKs send no idempotency key).
            Err(e) => self.step_failed(u, "create", e).await,
        }
    }

    fn adopt(&mut self, u: &mut UnitRecord, b: &RemoteBatch) -> Result<()> {
        u.batch_id = Some(b.id.clone());
        u.remote_status = Some(state_label(&b.state).to_string());
        u.phase = Phase::Submitted;
        u.submitted_at = Some(state::now_secs());
        self.put(u)?;
        self.schedule_poll(u.id, true);
        Ok(())
    }

    /// A unit left in `creating` (a crash, or an unclear or failed create):
    /// adopt the batch its submit made, or create it if there is none.
    async fn recover(&mut self, u: &mut UnitRecord) -> Result<()> {
        match self
            .backend
            .find(u.file_id.as_deref(), &self.identity(u))
            .await
        {
            Ok(Some(batch)) => {
                self.answered(u);
                self.adopt(u, &batch)?;
                self.event(
                    Some(u.id),
                    &format!("adopted batch {}, made by an earlier create", batch.id),
                );
                Ok(())
            }
            Ok(None) => {
                self.provider_up();
                self.create(u).await
            }
            Err(e) => self.step_failed(u, "find", e).await,
        }
    }

    fn schedule_poll(&mut self, id: u32, fresh: bool) {
        let interval = self.spec.poll_interval.as_millis() as u64;
        let max = self.spec.poll_max_interval.as_millis() as u64;
        let previous = if fresh {
            None
        } else {
            self.polls.get(&id).map(|(_, d)| d.as_millis() as u64)
        };
        let next = next_poll_interval_ms(previous, interval, max);
        let d = Duration::from_millis(next);
        self.polls.insert(id, (Instant::now() + d, d));
    }

    async fn poll(&mut self, u: &mut UnitRecord) -> Result<()> {
        let batch_id = u.batch_id.clone().expect("a submitted unit has a batch id");
        let batch = match self.backend.status(&batch_id).await {
            Ok(b) => b,
            // Retrying a 404 cannot help, and stopping would stop every
            // `resume` at the same place: the batch is lost, its requests
            // are sent again (a proxy that lost its state, an id deleted by
            // hand).
            Err(e) if e.is_not_found() => {
                self.polls.remove(&u.id);
                self.answered(u);
                let reason = format!("the provider no longer knows batch {batch_id}: {e}");
                self.event(
                    Some(u.id),
                    &format!("{reason}; its requests will be sent again"),
                );
                u.end = Some(state::EndKind::Lost { reason });
                u.results.clear();
                u.ended_at = Some(state::now_secs());
                u.phase = Phase::Ended;
                return self.put(u);
            }
            Err(e) => return self.step_failed(u, "status", e).await,
        };
        let was_parked = u.backoff.is_some();
        self.answered(u);
        let label = state_label(&batch.state).to_string();
        let changed = u.remote_status.as_deref() != Some(label.as_str());
        u.remote_status = Some(label.clone());
        let poll_secs = self.spec.poll_interval.as_secs();
        match (
            decide::on_status(&batch.state, u.creates, poll_secs),
            batch.state,
        ) {
            (StatusVerdict::KeepPolling, RemoteState::Running { done, failed, .. }) => {
                u.completed = done;
                u.failed = failed;
                if changed || was_parked {
                    self.put(u)?;
                    self.event(Some(u.id), &format!("batch {batch_id} is {label}"));
                }
                self.schedule_poll(u.id, false);
                kill_point("poll");
            }
            (StatusVerdict::Requeue { wait_secs }, RemoteState::Requeue { reason, .. }) => {
                // Not a failure: keep the staged file and create again later.
                self.polls.remove(&u.id);
                u.phase = Phase::Uploaded;
                u.batch_id = None;
                u.not_before = Some(state::now_secs() + wait_secs);
                self.put(u)?;
                self.event(
                    Some(u.id),
                    &format!(
                        "batch {batch_id} was not run ({reason}); submitting again in {}",
                        status::short_duration(wait_secs)
                    ),
                );
            }
            (
                _,
                RemoteState::Ended {
                    end,
                    results,
                    usage,
                    ..
                },
            ) => {
                self.polls.remove(&u.id);
                if let state::EndKind::Failed { reason } = &end {
                    u.batch_error = Some(reason.clone());
                }
                u.end = Some(end);
                u.results = results;
                u.billed = usage;
                u.ended_at = Some(state::now_secs());
                u.phase = Phase::Ended;
                self.put(u)?;
                self.event(Some(u.id), &format!("batch {batch_id} ended: {label}"));
                kill_point("poll");
            }
            _ => unreachable!("on_status follows the state"),
        }
        Ok(())
    }

    async fn download(&mut self, u: &mut UnitRecord) -> Result<()> {
        let dir = self.layout().results_dir();
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("create", &dir, e))?;
        for r in u.results.clone() {
            let dest = self.layout().result_file(u.id, u.creates, &r.name);
            if dest.exists() {
                continue;
            }
            match self.backend.fetch(&r, &dest).await {
                Ok(bytes) => {
                    self.answered(u);
                    self.event(
                        Some(u.id),
                        &format!("downloaded {} file {} ({bytes} bytes)", r.name, r.id),
                    );
                    kill_point("download");
                }
                // The file is gone (expired, deleted): its requests count
                // as not executed and are sent again, rather than stopping
                // every `resume` here.
                Err(e) if e.is_not_found() => {
                    self.answered(u);
                    self.event(
                        Some(u.id),
                        &format!(
                            "{} file {} is gone ({e}); its requests will be sent again",
                            r.name, r.id
                        ),
                    );
                }
                Err(e) => return self.step_failed(u, "download", e).await,
            }
        }
        u.backoff = None;
        u.phase = Phase::Downloaded;
        self.put(u)
    }

    fn request_of(&self, id: &str) -> Result<Option<state::RequestRecord>> {
        let Some(row) = id.strip_prefix('r').and_then(|n| n.parse::<u64>().ok()) else {
            return Ok(None);
        };
        Ok(self.store.request(self.generation(), row)?)
    }

    /// Classify every line of the result files and account for every
    /// request of the unit (one in no line gets `decide::missing_line`).
    async fn ingest(&mut self, u: &mut UnitRecord) -> Result<()> {
        let ids = unit_custom_ids(&self.layout().resolve(&u.file))?;
        let mut seen: HashMap<String, ResultLine> = HashMap::with_capacity(ids.len());
        for r in &u.results {
            let path = self.layout().result_file(u.id, u.creates, &r.name);
            if !path.exists() {
                continue;
            }
            let f = File::open(&path).map_err(|e| Error::io("read", &path, e))?;
            for (n, line) in BufReader::new(f).lines().enumerate() {
                let line = line.map_err(|e| Error::io("read", &path, e))?;
                let Ok(outcome) = self.backend.classify(&line) else {
                    continue;
                };
                if !ids.contains(outcome.custom_id()) {
                    self.event(
                        Some(u.id),
                        &format!(
                            "{}:{}: ignoring a result for `{}`, which this chunk did not send",
                            path.display(),
                            n + 1,
                            outcome.custom_id()
                        ),
                    );
                    continue;
                }
                seen.insert(outcome.custom_id().to_string(), outcome);
            }
        }
        let end = u.end.clone().unwrap_or(state::EndKind::Completed);
        let parser = self.parser()?;
        // Each request's state before this merge, to move the tally.
        let mut shifts: Vec<(RequestState, String)> = Vec::with_capacity(ids.len());
        let mut successes = Vec::new();
        let mut failures = Vec::new();
        let (mut input_tokens, mut output_tokens) = (0u64, 0u64);
        for id in &ids {
            let Some(req) = self.request_of(id)? else {
                continue;
            };
            let earlier = self.store.outcome(&req.fingerprint)?;
            // Runs of earlier attempts carry over: a request that expired
            // twice and then failed when it ran has run once.
            let earlier_runs = match &earlier {
                Some(Outcome::Failure(f)) => f.runs(),
                _ => 0,
            };
            shifts.push((request_state(earlier, &parser), req.fingerprint.clone()));
            let failure = |code, message, retryable, ran: bool| FailureRecord {
                code,
                message,
                retryable,
                attempts: u.attempt,
                ran,
                runs: Some(earlier_runs + u32::from(ran)),
            };
            match seen.remove(id) {
                Some(ResultLine::Success {
                    answer,
                    input_tokens: i,
                    output_tokens: o,
                    ..
                }) => {
                    input_tokens += i;
                    output_tokens += o;
                    successes.push((
                        req.fingerprint,
                        ResultRecord {
                            answer,
                            input_tokens: i,
                            output_tokens: o,
                        },
                    ));
                }
                Some(ResultLine::Failure {
                    code,
                    message,
                    retryable,
                    ran,
                    ..
                }) => failures.push((req.fingerprint, failure(code, message, retryable, ran))),
                None => {
                    let (code, message, retryable) = decide::missing_line(&end);
                    failures.push((req.fingerprint, failure(code, message, retryable, false)));
                }
            }
        }
        // The provider's own count of the batch is what it bills.
        if let Some(b) = u.billed {
            input_tokens = b.input_tokens;
            output_tokens = b.output_tokens;
        }
        u.input_tokens = input_tokens;
        u.output_tokens = output_tokens;
        if let Some(p) = self.plan.price.as_ref() {
            u.cost_usd = cost::actual(p, input_tokens, output_tokens);
            u.standard_cost_usd = cost::standard(p, input_tokens, output_tokens);
        }
        u.completed = successes.len() as u64;
        u.failed = failures.len() as u64;
        u.phase = Phase::Merged;
        self.store
            .merge_outcomes(&successes, &failures, u, self.generation())?;
        let max_attempts = self.spec.spec.retry.max_attempts;
        for (before, fingerprint) in shifts {
            let after = request_state(self.store.outcome(&fingerprint)?, &parser);
            self.tally.shift(before, after, max_attempts);
        }
        self.event(
            Some(u.id),
            &format!(
                "merged: {} succeeded, {} failed",
                successes.len(),
                failures.len()
            ),
        );
        kill_point("ingest");
        self.write_ledger(u)?;
        if !self.clean_remote(u).await {
            u.cleanup_pending = true;
            self.put(u)?;
        }
        Ok(())
    }

    /// Record the batch's usage in `<state>/usage.jsonl` exactly once.
    fn write_ledger(&self, u: &mut UnitRecord) -> Result<()> {
        if u.ledger_written {
            return Ok(());
        }
        let Some(batch_id) = u.batch_id.clone() else {
            return Ok(());
        };
        let ledger = self.layout().ledger();
        journal::record_usage_once(
            &ledger,
            &LedgerEntry {
                ts: state::now_secs(),
                job: self.job(),
                batch_id: &batch_id,
                provider: self.backend.name(),
                model: &self.plan.model,
                input_tokens: u.input_tokens,
                output_tokens: u.output_tokens,
                cost_usd: u.cost_usd,
                standard_cost_usd: u.standard_cost_usd,
                simulated: self.simulated,
            },
        )
        .map_err(|e| Error::io("append to", &ledger, e))?;
        u.ledger_written = true;
        self.put(u)
    }

    /// Delete the provider's copies once they are safely merged; they would
    /// otherwise count against storage for 30 days (OpenAPI spec,
    /// `FileExpirationAfter`), and Azure caps a resource at 500 batch files.
    /// True when done: deleted, or already gone. A failure is harmless to
    /// the job; a transient one is tried again at the next start and finish.
    async fn clean_remote(&self, u: &UnitRecord) -> bool {
        let batch_id = u.batch_id.as_deref().unwrap_or_default();
        match self
            .backend
            .clean_up(u.file_id.as_deref(), batch_id, &u.results)
            .await
        {
            Ok(()) => true,
            Err(e) if e.is_not_found() => true,
            Err(e) => {
                let again = e.step_class() != crate::provider::StepClass::Final;
                self.event(
                    Some(u.id),
                    &format!(
                        "could not delete the provider's files (harmless{}): {e}",
                        if again { "; tried again later" } else { "" }
                    ),
                );
                !again
            }
        }
    }

    /// Retry the clean-ups that failed transiently before.
    async fn clean_pending(&mut self, units: &mut [UnitRecord]) -> Result<()> {
        for u in units.iter_mut().filter(|u| u.cleanup_pending) {
            if self.clean_remote(u).await {
                u.cleanup_pending = false;
                self.put(u)?;
            }
        }
        Ok(())
    }

    /// Every outstanding request of the plan, counted by where it stands.
    fn scan_tally(&self) -> Result<Tally> {
        let parser = self.parser()?;
        let max_attempts = self.spec.spec.retry.max_attempts;
        let mut tally = Tally::default();
        for r in self.store.requests(self.generation()) {
            let r = r?;
            if r.seq.is_none() {
                continue;
            }
            tally.add(
                request_state(self.store.outcome(&r.fingerprint)?, &parser),
                max_attempts,
            );
        }
        Ok(tally)
    }

    /// Retryable failures with attempts left go into new units.
    fn plan_retries(&mut self, units: &[UnitRecord]) -> Result<Vec<UnitRecord>> {
        let max_attempts = self.spec.spec.retry.max_attempts;
        let parser = self.parser()?;
        // Custom id → prompt tokens of each request to send again.
        let mut rows: HashMap<String, u64> = HashMap::new();
        for r in self.store.requests(self.generation()) {
            let r = r?;
            if r.seq.is_none() {
                continue;
            }
            let state = request_state(self.store.outcome(&r.fingerprint)?, &parser);
            if decide::should_retry(state, max_attempts) {
                rows.insert(custom_id(r.row), r.tokens);
            }
        }
        if rows.is_empty() {
            return Ok(vec![]);
        }
        let attempt = units.iter().map(|u| u.attempt).max().unwrap_or(1) + 1;
        let first_id = units.iter().map(|u| u.id).max().unwrap_or(0) + 1;
        // Lines come from the plan's own chunk files, so a retry sends
        // exactly the bytes the first attempt sent.
        let mut lines: Vec<(String, u64)> = Vec::new();
        for c in &self.plan.chunks {
            let path = self.layout().resolve(&c.file);
            let f = File::open(&path).map_err(|e| Error::io("read", &path, e))?;
            for line in BufReader::new(f).lines() {
                let line = line.map_err(|e| Error::io("read", &path, e))?;
                if let Some(&tokens) = line_custom_id(&line).and_then(|id| rows.get(id)) {
                    lines.push((line, tokens));
                }
            }
        }
        let items: Vec<Item> = lines
            .iter()
            .map(|(l, tokens)| Item {
                tokens: *tokens,
                bytes: l.len() as u64 + 1,
            })
            .collect();
        let (limits, _) = Limits::from_spec(
            self.spec.spec.chunking.max_requests,
            self.spec.max_bytes,
            self.spec.spec.chunking.max_tokens,
            None,
        );
        let packing = crate::chunking::pack(&items, &limits)?;
        let mut out = Vec::new();
        for (k, span) in packing.spans.iter().enumerate() {
            let id = first_id + k as u32;
            let rel = Layout::retry_chunk_rel(self.generation(), attempt, id);
            let path = self.layout().resolve(&rel);
            let io = |e| Error::io("write", &path, e);
            let mut w = ChunkWriter::create(&path).map_err(io)?;
            for (l, _) in &lines[span.start..span.end] {
                w.push(l.as_bytes()).map_err(io)?;
            }
            let written = w.finish().map_err(io)?;
            let u = UnitRecord::planned(
                id,
                attempt,
                rel,
                written.sha256,
                span.requests() as u64,
                span.bytes,
                span.tokens,
            );
            self.put(&u)?;
            self.event(
                Some(id),
                &format!(
                    "retry chunk (attempt {attempt}) with {} requests",
                    u.requests
                ),
            );
            out.push(u);
        }
        Ok(out)
    }

    /// `batchgrader cancel`: stop the batches that are out and mark the job
    /// cancelled, so that `resume` collects partial results but submits
    /// nothing new. Returns how many batches were asked to stop.
    pub async fn cancel(&mut self) -> Result<usize> {
        let mut units = self.ensure_units()?;
        self.settle_creating(&mut units).await?;
        self.store.set_cancelled(Some(state::now_secs()))?;
        let out = units.iter().filter(|u| u.phase == Phase::Submitted).count();
        self.cancel_in_flight(&mut units).await;
        self.tally = self.scan_tally()?;
        let snap = self.snapshot(
            &units,
            RunState::Halted,
            Some("cancelled: `batchgrader resume` collects what the batches finished; `batchgrader apply SPEC` starts the job again".into()),
            None,
        );
        status::write(self.layout(), &snap)
            .map_err(|e| Error::io("write", self.layout().status(), e))?;
        Ok(out)
    }

    /// Units whose create may have happened (a crash, an unclear answer):
    /// adopt the batch if the provider has it, so that it can be cancelled,
    /// or make sure none will be created. One the provider cannot be asked
    /// about stays `creating`; the next run looks again.
    async fn settle_creating(&mut self, units: &mut [UnitRecord]) -> Result<()> {
        for u in units.iter_mut().filter(|u| u.phase == Phase::Creating) {
            match self
                .backend
                .find(u.file_id.as_deref(), &self.identity(u))
                .await
            {
                Ok(Some(b)) => self.adopt(u, &b)?,
                Ok(None) => {
                    u.phase = Phase::Uploaded;
                    u.backoff = None;
                    self.put(u)?;
                }
                Err(e) => self.event(
                    Some(u.id),
                    &format!(
                        "could not check whether its batch was created ({e}); `batchgrader cancel` looks again"
                    ),
                ),
            }
        }
        Ok(())
    }

    /// Stop the job by the halt policy: nothing more is created, the
    /// batches that are out are cancelled, the output is written.
    async fn halt(
        &mut self,
        units: &mut [UnitRecord],
        reason: String,
    ) -> Result<(Ending, Summary)> {
        self.settle_creating(units).await?;
        self.cancel_in_flight(units).await;
        self.finish(Ending::Halted(reason)).await
    }

    /// Ask every batch that is out to stop. A transient failure is tried
    /// again with the usual backoff for up to a minute per batch: a batch
    /// left running is money spent after the user (or the policy) said stop.
    pub async fn cancel_in_flight(&self, units: &mut [UnitRecord]) {
        const CANCEL_GIVE_UP_SECS: u64 = 60;
        for u in units.iter_mut() {
            let (Phase::Submitted, Some(id)) = (u.phase, u.batch_id.clone()) else {
                continue;
            };
            let mut backoff = None;
            loop {
                let e = match self.backend.cancel(&id).await {
                    Ok(()) => {
                        self.event(Some(u.id), &format!("cancelled batch {id}"));
                        break;
                    }
                    Err(e) => e,
                };
                let now = state::now_secs();
                match decide::on_step_error(
                    e.step_class(),
                    "cancel",
                    &e.to_string(),
                    backoff.as_ref(),
                    now,
                    CANCEL_GIVE_UP_SECS,
                ) {
                    StepVerdict::Park(b) => {
                        self.event(
                            Some(u.id),
                            &format!(
                                "cancel of batch {id} failed ({e}); retrying in {}",
                                status::short_duration(b.retry_at.saturating_sub(now))
                            ),
                        );
                        tokio::time::sleep(Duration::from_secs(b.retry_at.saturating_sub(now)))
                            .await;
                        backoff = Some(b);
                    }
                    StepVerdict::Stop | StepVerdict::GiveUp { .. } => {
                        self.event(
                            Some(u.id),
                            &format!(
                                "could not cancel batch {id}: {e}; cancel it by hand (it may still run and be billed)"
                            ),
                        );
                        break;
                    }
                }
            }
        }
    }

    fn parser(&self) -> Result<answer::Parser> {
        let o = &self.spec.spec.output;
        answer::Parser::new(
            o.parse,
            o.labels.as_deref().unwrap_or_default(),
            o.pattern.as_deref(),
        )
        .map_err(Error::usage)
    }

    fn snapshot(
        &self,
        units: &[UnitRecord],
        state: RunState,
        message: Option<String>,
        output: Option<String>,
    ) -> Snapshot {
        let receipt = decide::receipt(units);
        Snapshot {
            job: self.job().to_string(),
            state,
            pid: (state == RunState::Running).then(std::process::id),
            updated_at: state::now_secs(),
            started_at: Some(self.started_at),
            model: self.plan.model.clone(),
            totals: decide::totals(
                self.plan.rows,
                self.plan.outstanding,
                self.plan.already_done,
                &self.tally,
            ),
            estimated_cost_usd: self
                .plan
                .estimate
                .as_ref()
                .map(|e| e.expected.or(e.high).unwrap_or(e.low)),
            actual_cost_usd: receipt.paid_usd,
            output_path: output,
            message,
            receipt,
            outage_since: self.outage_since,
            units: units.iter().map(unit_status).collect(),
        }
    }

    fn write_status(&self, units: &[UnitRecord], state: RunState, message: Option<String>) {
        let snap = self.snapshot(units, state, message, None);
        self.progress.table(&snap);
        if let Err(e) = status::write(self.layout(), &snap) {
            self.ui.warn(&format!("cannot write status.json: {e}"));
        }
    }

    /// Write the output (unless interrupted or detached with work left),
    /// the final status, and the summary.
    async fn finish(&mut self, ending: Ending) -> Result<(Ending, Summary)> {
        let mut units = self.store.units(self.generation())?;
        if ending == Ending::Finished {
            self.clean_pending(&mut units).await?;
        }
        self.tally = self.scan_tally()?;
        let (state, message) = match &ending {
            Ending::Finished => (RunState::Finished, None),
            Ending::Detached => (
                RunState::Detached,
                Some("detached: batches keep running; `batchgrader resume` collects them".to_string()),
            ),
            Ending::Interrupted => (
                RunState::Detached,
                Some("interrupted: state is saved and batches keep running; run `batchgrader resume` to continue".to_string()),
            ),
            Ending::Halted(r) => (RunState::Halted, Some(format!("halted: {r}"))),
        };
        let write_output = matches!(ending, Ending::Finished | Ending::Halted(_));
        let mut written = None;
        if write_output {
            self.event(None, "writing the output");
            written = Some(write_output_file(self.store, self.spec, self.plan)?);
            kill_point("output");
        }
        let out_path = write_output.then(|| self.spec.output_path.display().to_string());
        let snap = self.snapshot(&units, state, message.clone(), out_path.clone());
        self.progress.clear();
        status::write(self.layout(), &snap)
            .map_err(|e| Error::io("write", self.layout().status(), e))?;
        let (w, dist) = written.unwrap_or_default();
        let summary = Summary {
            job: self.job().to_string(),
            ending: match &ending {
                Ending::Finished => "finished",
                Ending::Detached => "detached",
                Ending::Interrupted => "interrupted",
                Ending::Halted(_) => "halted",
            }
            .to_string(),
            rows: self.plan.rows,
            graded: w.ok,
            parse_failures: w.parse_errors,
            failed: w.failed,
            not_graded: w.not_graded,
            already_graded_before: self.plan.already_done,
            estimated_cost_usd: snap.estimated_cost_usd,
            actual_cost_usd: snap.actual_cost_usd,
            output_path: out_path,
            distribution: dist,
            simulated: self.simulated,
            message,
            receipt: snap.receipt,
        };
        Ok((ending, summary))
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

fn unit_status(u: &UnitRecord) -> UnitStatus {
    let mut s = UnitStatus::from(u);
    s.backoff = u.backoff.as_ref().map(|b| status::Backoff {
        step: b.step.clone(),
        failures: b.failures,
        since: b.since,
        retry_at: b.retry_at,
        last_error: b.last_error.clone(),
    });
    if let Some(r) = &u.given_up {
        s.remote_status = Some(format!("given up: {r}"));
    }
    s
}

/// Where a request stands, from its latest outcome.
fn request_state(outcome: Option<Outcome>, parser: &answer::Parser) -> RequestState {
    match outcome {
        Some(Outcome::Success(res)) => RequestState::Succeeded {
            parsed: parser.parse(&res.answer).is_ok(),
        },
        Some(Outcome::Failure(f)) => RequestState::Failed {
            retryable: f.retryable,
            attempts: f.attempts,
            runs: f.runs(),
        },
        None => RequestState::Pending,
    }
}

/// Poll backoff: start at `interval`, grow by half each time, cap at `max`.
pub fn next_poll_interval_ms(previous_ms: Option<u64>, interval_ms: u64, max_ms: u64) -> u64 {
    match previous_ms {
        None => interval_ms.min(max_ms),
        Some(p) => (p + p / 2).clamp(interval_ms.min(max_ms), max_ms),
    }
}

/// The custom ids a request file holds.
fn unit_custom_ids(path: &Path) -> Result<HashSet<String>> {
    let f = File::open(path).map_err(|e| Error::io("read", path, e))?;
    let mut out = HashSet::new();
    for line in BufReader::new(f).lines() {
        let line = line.map_err(|e| Error::io("read", path, e))?;
        if let Some(id) = line_custom_id(&line) {
            out.insert(id.to_string());
        }
    }
    Ok(out)
}

/// The custom id of a request line we wrote (`{"custom_id":"r12",...`).
fn line_custom_id(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("{\"custom_id\":\"")?;
    rest.split('"').next()
}

fn verify_sha256(path: &Path, want: &str) -> Result<()> {
    let got = sha256_of(path).map_err(|e| Error::io("read", path, e))?;
    if got != want {
        return Err(Error::usage_with_hint(
            format!(
                "request file {} changed since it was planned",
                path.display()
            ),
            "run `batchgrader plan SPEC` again; never edit files under state/",
        ));
    }
    Ok(())
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

    #[test]
    fn poll_backoff_grows_to_the_cap() {
        let mut p = None;
        let mut seen = vec![];
        for _ in 0..6 {
            let n = next_poll_interval_ms(p, 1000, 4000);
            seen.push(n);
            p = Some(n);
        }
        assert_eq!(seen, [1000, 1500, 2250, 3375, 4000, 4000]);
        assert_eq!(next_poll_interval_ms(None, 9000, 4000), 4000);
    }
}
