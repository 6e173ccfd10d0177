//! `apply`: submit, poll, download and merge, crash-safe.
//!
//! Architecture: `machine` decides (pure functions over unit records), this
//! shell acts. Every transition of a unit is written to the state store and
//! flushed *before* the next side effect, following DESIGN 5:
//!
//! ```text
//! planned ─upload→ uploaded ─record intent→ creating ─create→ submitted ─poll…→ ended
//!   ─download→ downloaded ─classify every line→ merged
//! ```
//!
//! A `kill -9` at any instant leaves a state from which `resume` goes on:
//! an upload is simply redone (a spare file costs nothing), a unit found in
//! `creating` first looks for a batch carrying its metadata and adopts it
//! rather than creating another, and downloads and merges are idempotent.
//! After every transition `status.json` is rewritten, so `status` works
//! while this process holds the job's lock.

pub mod answer;
pub mod machine;
mod progress;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::chunking::{Item, Limits};
use crate::cost;
use crate::error::{Error, Result};
use crate::input::Source;
use crate::output::{self, AddedColumns, RowResult, RowStatus, Written};
use crate::prompt::CHAT_URL;
use crate::provider::{LineOutcome, OpenAiClient, classify_line};
use crate::report::Ui;
use crate::spec::{CheckedSpec, ParseMode};
use crate::state::{
    self, FailureRecord, JobStore, Outcome, Phase, PlanRecord, ResultRecord, UnitRecord, custom_id,
};
use crate::status::{self, RunState, Snapshot, Totals, UnitStatus};
use machine::{Action, RequestState, UnitView};
pub use progress::Progress;

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

/// Everything one run needs.
pub struct Runner<'a> {
    pub store: &'a JobStore,
    pub spec: &'a CheckedSpec,
    pub plan: &'a PlanRecord,
    pub client: &'a OpenAiClient,
    pub ui: &'a Ui,
    pub opts: ApplyOptions,
    pub interrupted: Arc<AtomicBool>,
    pub simulated: bool,
    pub progress: Progress,
    /// Next status check per unit: (when, current interval).
    polls: HashMap<u32, (Instant, Duration)>,
    started: Instant,
    started_at: u64,
}

fn now_ms_since(start: Instant, t: Instant) -> u64 {
    t.saturating_duration_since(start).as_millis() as u64
}

impl<'a> Runner<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: &'a JobStore,
        spec: &'a CheckedSpec,
        plan: &'a PlanRecord,
        client: &'a OpenAiClient,
        ui: &'a Ui,
        opts: ApplyOptions,
        interrupted: Arc<AtomicBool>,
        simulated: bool,
    ) -> Self {
        Runner {
            store,
            spec,
            plan,
            client,
            ui,
            opts,
            interrupted,
            simulated,
            progress: Progress::new(*ui),
            polls: HashMap::new(),
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

    /// Run the job until it is finished, detached, interrupted or halted.
    pub async fn run(&mut self) -> Result<(Ending, Summary)> {
        prune_events(self.store.dir(), KEEP_EVENT_RUNS);
        append_event(
            self.store.dir(),
            None,
            &format!("run started (pid {})", std::process::id()),
        );
        let mut units = self.ensure_units()?;
        // A run killed between merging a chunk and writing its usage line
        // finishes that bookkeeping first.
        for u in units.iter_mut() {
            if u.phase == Phase::Merged && !u.ledger_written {
                self.write_ledger(u)?;
                self.clean_remote(u).await;
            }
        }
        if let Some(ending) = self.check_budget_before_start(&units)? {
            return self.finish(ending).await;
        }
        // After `batchgrader cancel`, collect what the cancelled batches
        // finished, but submit nothing new and retry nothing.
        let cancelled = self.store.cancelled_at()?.is_some();
        loop {
            if self.interrupted.load(Ordering::SeqCst) {
                return self.finish(Ending::Interrupted).await;
            }
            self.write_status(&units, RunState::Running, None);
            let now = Instant::now();
            let views: Vec<UnitView> = units.iter().map(|u| self.view(u, now)).collect();
            let step = machine::step(
                &views,
                now_ms_since(self.started, now),
                machine::Admission {
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
                if let Some(reason) = self.halt_reason(&units, true)? {
                    return self.finish(Ending::Halted(reason)).await;
                }
                let retries = self.plan_retries(&units)?;
                if retries.is_empty() {
                    return self.finish(Ending::Finished).await;
                }
                units.extend(retries);
                continue;
            }
            if step.actions.is_empty() {
                if self.opts.detach {
                    return self.finish(Ending::Detached).await;
                }
                let wake = step
                    .wake_at_ms
                    .map(|ms| self.started + Duration::from_millis(ms))
                    .unwrap_or(now + Duration::from_secs(1));
                self.sleep_until(wake).await;
                continue;
            }
            let mut submitted_any = false;
            for action in step.actions {
                if self.interrupted.load(Ordering::SeqCst) {
                    break;
                }
                let id = match action {
                    Action::Recover(id)
                    | Action::Submit(id)
                    | Action::Poll(id)
                    | Action::Download(id)
                    | Action::Ingest(id) => id,
                };
                let idx = units
                    .iter()
                    .position(|u| u.id == id)
                    .expect("actions name known units");
                let mut unit = units[idx].clone();
                match action {
                    Action::Submit(_) => {
                        self.submit(&mut unit).await?;
                        submitted_any = true;
                    }
                    Action::Recover(_) => self.recover(&mut unit).await?,
                    Action::Poll(_) => self.poll(&mut unit).await?,
                    Action::Download(_) => self.download(&mut unit).await?,
                    Action::Ingest(_) => self.ingest(&mut unit).await?,
                }
                units[idx] = unit;
                self.write_status(&units, RunState::Running, None);
                let merged = matches!(action, Action::Ingest(_));
                if let Some(reason) = self.halt_reason(&units, merged)? {
                    self.cancel_in_flight(&mut units).await;
                    return self.finish(Ending::Halted(reason)).await;
                }
            }
            if self.opts.detach && !submitted_any && !self.has_submittable(&units) {
                return self.finish(Ending::Detached).await;
            }
        }
    }

    fn has_submittable(&self, units: &[UnitRecord]) -> bool {
        let in_flight = units.iter().filter(|u| machine::in_flight(u.phase)).count();
        units
            .iter()
            .any(|u| u.phase == Phase::Uploaded && u.not_before.is_none())
            || (units.iter().any(|u| u.phase == Phase::Planned)
                && in_flight < self.spec.spec.concurrency.max_batches_in_flight as usize)
    }

    fn view(&self, u: &UnitRecord, now: Instant) -> UnitView {
        let to_ms = |t: Instant| now_ms_since(self.started, t);
        let not_before_ms = u.not_before.map(|nb| {
            let wait = nb.saturating_sub(state::now_secs());
            to_ms(now + Duration::from_secs(wait))
        });
        UnitView {
            id: u.id,
            phase: u.phase,
            not_before_ms,
            next_poll_ms: self.polls.get(&u.id).map(|(t, _)| to_ms(*t)),
            tokens: u.tokens,
        }
    }

    async fn sleep_until(&self, wake: Instant) {
        // Short slices, so Ctrl-C is honoured within a quarter second.
        while Instant::now() < wake && !self.interrupted.load(Ordering::SeqCst) {
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
            self.store.put_unit(self.generation(), &u)?;
            units.push(u);
        }
        Ok(units)
    }

    /// `halt.max_cost_usd` refuses a start whose upper estimate is above it.
    fn check_budget_before_start(&self, units: &[UnitRecord]) -> Result<Option<Ending>> {
        let Some(budget) = self.spec.spec.halt.max_cost_usd else {
            return Ok(None);
        };
        let untouched = units
            .iter()
            .all(|u| u.phase == Phase::Planned && u.attempt == 1);
        if !untouched {
            return Ok(None);
        }
        let Some(e) = &self.plan.estimate else {
            return Ok(None);
        };
        Ok(match e.high {
            Some(high) if high > budget => Some(Ending::Halted(format!(
                "the estimated cost, up to {}, is above halt.max_cost_usd {}; nothing was submitted. Raise the budget or lower request.max_tokens",
                cost::usd(high),
                cost::usd(budget)
            ))),
            None => Some(Ending::Halted(format!(
                "halt.max_cost_usd {} is set, but the request sets no max_tokens, so the cost has no upper bound; nothing was submitted. Set request.max_tokens",
                cost::usd(budget)
            ))),
            _ => None,
        })
    }

    fn metadata(&self, u: &UnitRecord) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert("batchgrader_job".into(), self.job().to_string());
        m.insert("batchgrader_chunk".into(), u.id.to_string());
        m.insert("batchgrader_attempt".into(), u.attempt.to_string());
        m.insert("batchgrader_submit".into(), u.creates.to_string());
        m.insert(
            "batchgrader_plan".into(),
            self.plan.plan_hash[..16].to_string(),
        );
        m
    }

    fn event(&self, unit: Option<u32>, msg: &str) {
        self.progress.event(unit, msg);
        append_event(self.store.dir(), unit, msg);
    }

    /// Upload (if not yet) and create the batch.
    async fn submit(&mut self, u: &mut UnitRecord) -> Result<()> {
        if u.phase == Phase::Planned || u.file_id.is_none() {
            let path = self.store.dir().join(&u.file);
            verify_sha256(&path, &u.sha256)?;
            let name = format!("{}.chunk-{}.attempt-{}.jsonl", self.job(), u.id, u.attempt);
            let file = self.client.upload_batch_file(&path, &name).await?;
            u.file_id = Some(file.id.clone());
            u.phase = Phase::Uploaded;
            self.store.put_unit(self.generation(), u)?;
            self.event(Some(u.id), &format!("uploaded as {}", file.id));
            kill_point("upload");
        }
        u.not_before = None;
        u.creates += 1;
        u.phase = Phase::Creating;
        self.store.put_unit(self.generation(), u)?;
        kill_point("create-intent");
        self.create(u).await
    }

    async fn create(&mut self, u: &mut UnitRecord) -> Result<()> {
        let file_id = u.file_id.clone().expect("an uploaded unit has a file id");
        let meta = self.metadata(u);
        match self.client.create_batch(&file_id, CHAT_URL, &meta).await {
            Ok(batch) => {
                // The batch exists but is not recorded: the case `recover` is for.
                kill_point("create-sent");
                self.adopt(u, &batch.id, batch.status.as_str())?;
                self.event(Some(u.id), &format!("submitted as batch {}", batch.id));
                kill_point("create");
                Ok(())
            }
            Err(e) if e.is_unclear() => {
                self.event(
                    Some(u.id),
                    &format!(
                        "create answer unclear ({e}); looking for the batch before creating again"
                    ),
                );
                self.recover(u).await
            }
            Err(e) => Err(e.into()),
        }
    }

    fn adopt(&mut self, u: &mut UnitRecord, batch_id: &str, status: &str) -> Result<()> {
        u.batch_id = Some(batch_id.to_string());
        u.remote_status = Some(status.to_string());
        u.phase = Phase::Submitted;
        u.submitted_at = Some(state::now_secs());
        self.store.put_unit(self.generation(), u)?;
        self.schedule_poll(u.id, true);
        Ok(())
    }

    /// A unit left in `creating`: adopt the batch that carries its metadata,
    /// or create it if none does.
    async fn recover(&mut self, u: &mut UnitRecord) -> Result<()> {
        let want = self.metadata(u);
        let found = self.find_created(u).await?;
        match found {
            Some(batch) => {
                self.adopt(u, &batch.id, batch.status.as_str())?;
                self.event(
                    Some(u.id),
                    &format!("adopted batch {} created before an interruption", batch.id),
                );
                Ok(())
            }
            None => {
                let file_id = u.file_id.clone().expect("a creating unit has a file id");
                let batch = self.client.create_batch(&file_id, CHAT_URL, &want).await;
                match batch {
                    Ok(b) => {
                        self.adopt(u, &b.id, b.status.as_str())?;
                        self.event(Some(u.id), &format!("submitted as batch {}", b.id));
                        kill_point("create");
                        Ok(())
                    }
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    /// The batch this unit's latest create made, if the provider has it: the
    /// one carrying the unit's metadata, or, for servers that do not echo
    /// metadata, the one built from the unit's uploaded file (a file is
    /// uploaded per unit, so only this unit's batches use it; after a
    /// `token_limit_exceeded` the earlier batch of that file has failed).
    async fn find_created(&self, u: &UnitRecord) -> Result<Option<crate::provider::Batch>> {
        let want = self.metadata(u);
        let file_id = u.file_id.clone();
        let found = self
            .client
            .find_batch(
                |b| match &b.metadata {
                    Some(m) if !m.is_empty() => want.iter().all(|(k, v)| m.get(k) == Some(v)),
                    _ => {
                        file_id.is_some()
                            && b.input_file_id == file_id
                            && b.status != crate::provider::BatchStatus::Failed
                    }
                },
                None,
            )
            .await?;
        Ok(found)
    }

    fn schedule_poll(&mut self, id: u32, fresh: bool) {
        let interval = self.spec.poll_interval.as_millis() as u64;
        let max = self.spec.poll_max_interval.as_millis() as u64;
        let previous = if fresh {
            None
        } else {
            self.polls.get(&id).map(|(_, d)| d.as_millis() as u64)
        };
        let next = machine::next_poll_interval_ms(previous, interval, max);
        let d = Duration::from_millis(next);
        self.polls.insert(id, (Instant::now() + d, d));
    }

    async fn poll(&mut self, u: &mut UnitRecord) -> Result<()> {
        let batch_id = u.batch_id.clone().expect("a submitted unit has a batch id");
        let batch = match self.client.retrieve_batch(&batch_id).await {
            Ok(b) => b,
            Err(e) if !(e.is_auth() || e.is_quota()) => {
                // A long outage should not end a day-long job: try again at
                // the next poll; the batch keeps running meanwhile.
                self.event(Some(u.id), &format!("status check failed, will retry: {e}"));
                self.schedule_poll(u.id, false);
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let status = batch.status.as_str().to_string();
        let changed = u.remote_status.as_deref() != Some(status.as_str());
        if let Some(c) = &batch.request_counts {
            u.completed = c.completed.unwrap_or(u.completed);
            u.failed = c.failed.unwrap_or(u.failed);
        }
        u.remote_status = Some(status.clone());
        if !batch.status.is_terminal() {
            if changed {
                self.store.put_unit(self.generation(), u)?;
                self.event(Some(u.id), &format!("batch {batch_id} is {status}"));
            }
            self.schedule_poll(u.id, false);
            kill_point("poll");
            return Ok(());
        }
        self.polls.remove(&u.id);
        let errors = batch.error_list();
        if status == "failed"
            && errors
                .iter()
                .any(|e| e.code.as_deref() == Some("token_limit_exceeded"))
        {
            // The enqueued-token quota is full: not a failure. Keep the
            // uploaded file and create again later (DESIGN 5.4).
            let wait = machine::token_limit_backoff_secs(u.creates);
            u.phase = Phase::Uploaded;
            u.batch_id = None;
            u.not_before = Some(state::now_secs() + wait);
            self.store.put_unit(self.generation(), u)?;
            self.event(
                Some(u.id),
                &format!(
                    "batch {batch_id} hit the enqueued-token limit; submitting again in {wait} s"
                ),
            );
            return Ok(());
        }
        if !errors.is_empty() {
            let text: Vec<String> = errors
                .iter()
                .take(5)
                .map(|e| {
                    format!(
                        "{}{}: {}",
                        e.code.as_deref().unwrap_or("error"),
                        e.line.map(|l| format!(" (line {l})")).unwrap_or_default(),
                        e.message.as_deref().unwrap_or("")
                    )
                })
                .collect();
            u.batch_error = Some(text.join("; "));
        }
        u.output_file_id = batch.output_file_id.clone();
        u.error_file_id = batch.error_file_id.clone();
        u.ended_at = Some(state::now_secs());
        u.phase = Phase::Ended;
        self.store.put_unit(self.generation(), u)?;
        self.event(Some(u.id), &format!("batch {batch_id} ended: {status}"));
        kill_point("poll");
        Ok(())
    }

    fn result_path(&self, u: &UnitRecord, kind: &str) -> PathBuf {
        self.store
            .dir()
            .join("results")
            .join(format!("unit-{}-{}-{kind}.jsonl", u.id, u.creates))
    }

    async fn download(&mut self, u: &mut UnitRecord) -> Result<()> {
        let dir = self.store.dir().join("results");
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("create", &dir, e))?;
        for (kind, id) in [
            ("output", u.output_file_id.clone()),
            ("errors", u.error_file_id.clone()),
        ] {
            let Some(id) = id else { continue };
            let dest = self.result_path(u, kind);
            if !dest.exists() {
                let bytes = self.client.download_file(&id, &dest).await?;
                self.event(
                    Some(u.id),
                    &format!("downloaded {kind} file {id} ({bytes} bytes)"),
                );
                kill_point("download");
            }
        }
        u.phase = Phase::Downloaded;
        self.store.put_unit(self.generation(), u)?;
        Ok(())
    }

    /// Classify every line of the result files and account for every
    /// request of the unit (one in neither file was not executed).
    async fn ingest(&mut self, u: &mut UnitRecord) -> Result<()> {
        let ids = unit_custom_ids(&self.store.dir().join(&u.file))?;
        let mut seen: HashMap<String, LineOutcome> = HashMap::with_capacity(ids.len());
        for kind in ["output", "errors"] {
            let path = self.result_path(u, kind);
            if !path.exists() {
                continue;
            }
            let f = File::open(&path).map_err(|e| Error::io("read", &path, e))?;
            for (n, line) in BufReader::new(f).lines().enumerate() {
                let line = line.map_err(|e| Error::io("read", &path, e))?;
                let Ok(outcome) = classify_line(&line) else {
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
        let mut successes = Vec::new();
        let mut failures = Vec::new();
        let (mut input_tokens, mut output_tokens) = (0u64, 0u64);
        let expired_or_cancelled = matches!(
            u.remote_status.as_deref(),
            Some("expired" | "cancelled" | "cancelling")
        );
        for id in &ids {
            let Some(row) = id.strip_prefix('r').and_then(|n| n.parse::<u64>().ok()) else {
                continue;
            };
            let Some(req) = self.store.request(self.generation(), row)? else {
                continue;
            };
            match seen.remove(id) {
                Some(LineOutcome::Success(s)) => {
                    input_tokens += s.usage.prompt_tokens;
                    output_tokens += s.usage.completion_tokens;
                    successes.push((
                        req.fingerprint,
                        ResultRecord {
                            answer: s.content,
                            input_tokens: s.usage.prompt_tokens,
                            output_tokens: s.usage.completion_tokens,
                        },
                    ));
                }
                Some(LineOutcome::Failure(f)) => failures.push((
                    req.fingerprint,
                    FailureRecord {
                        code: f.code,
                        message: f.message,
                        retryable: f.retryable,
                        attempts: u.attempt,
                    },
                )),
                None => {
                    let (code, message, retryable) = match &u.batch_error {
                        // A batch that failed validation: our request file is
                        // at fault, and sending it again will not help.
                        Some(err) if !expired_or_cancelled => {
                            ("batch_failed".to_string(), err.clone(), false)
                        }
                        _ => (
                            "not_executed".to_string(),
                            "the batch ended without a result for this request".to_string(),
                            true,
                        ),
                    };
                    failures.push((
                        req.fingerprint,
                        FailureRecord {
                            code,
                            message,
                            retryable,
                            attempts: u.attempt,
                        },
                    ));
                }
            }
        }
        u.input_tokens = input_tokens;
        u.output_tokens = output_tokens;
        u.cost_usd = self
            .plan
            .price
            .as_ref()
            .map_or(0.0, |p| cost::actual(p, input_tokens, output_tokens));
        u.completed = successes.len() as u64;
        u.failed = failures.len() as u64;
        u.phase = Phase::Merged;
        self.store
            .merge_outcomes(&successes, &failures, u, self.generation())?;
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
        self.clean_remote(u).await;
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
        let ledger = self
            .store
            .dir()
            .parent()
            .unwrap_or(Path::new("."))
            .join("usage.jsonl");
        // A crash between the append and the flag leaves the line written:
        // look before appending again.
        let already = std::fs::read_to_string(&ledger)
            .map(|t| {
                t.lines()
                    .any(|l| l.contains(&format!("\"batch_id\":\"{batch_id}\"")))
            })
            .unwrap_or(false);
        if !already {
            #[derive(Serialize)]
            struct Entry<'a> {
                ts: u64,
                job: &'a str,
                batch_id: &'a str,
                model: &'a str,
                input_tokens: u64,
                output_tokens: u64,
                cost_usd: f64,
                simulated: bool,
            }
            let line = serde_json::to_string(&Entry {
                ts: state::now_secs(),
                job: self.job(),
                batch_id: &batch_id,
                model: &self.plan.model,
                input_tokens: u.input_tokens,
                output_tokens: u.output_tokens,
                cost_usd: u.cost_usd,
                simulated: self.simulated,
            })
            .expect("entries serialize");
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&ledger)
                .map_err(|e| Error::io("append to", &ledger, e))?;
            writeln!(f, "{line}").map_err(|e| Error::io("append to", &ledger, e))?;
            f.sync_all()
                .map_err(|e| Error::io("append to", &ledger, e))?;
        }
        u.ledger_written = true;
        self.store.put_unit(self.generation(), u)?;
        Ok(())
    }

    /// Delete the provider's copies once they are safely merged; they would
    /// otherwise count against storage for 30 days. Failures only warn.
    async fn clean_remote(&self, u: &UnitRecord) {
        for id in [&u.file_id, &u.output_file_id, &u.error_file_id]
            .into_iter()
            .flatten()
        {
            if let Err(e) = self.client.delete_file(id).await {
                self.event(
                    Some(u.id),
                    &format!("could not delete file {id} (harmless): {e}"),
                );
            }
        }
    }

    /// Retryable failures with attempts left go into new units.
    fn plan_retries(&mut self, units: &[UnitRecord]) -> Result<Vec<UnitRecord>> {
        let max_attempts = self.spec.spec.retry.max_attempts;
        // Custom id → prompt tokens of each request to send again.
        let mut rows: HashMap<String, u64> = HashMap::new();
        for r in self.store.requests(self.generation()) {
            let r = r?;
            if r.seq.is_none() {
                continue;
            }
            let state = match self.store.outcome(&r.fingerprint)? {
                Some(Outcome::Success(_)) => RequestState::Succeeded,
                Some(Outcome::Failure(f)) => RequestState::Failed {
                    retryable: f.retryable,
                    attempts: f.attempts,
                },
                None => RequestState::Pending,
            };
            if machine::should_retry(state, max_attempts) {
                rows.insert(custom_id(r.row), r.tokens);
            }
        }
        if rows.is_empty() {
            return Ok(vec![]);
        }
        let attempt = units.iter().map(|u| u.attempt).max().unwrap_or(1) + 1;
        let first_id = units.iter().map(|u| u.id).max().unwrap_or(0) + 1;
        let dir = self
            .store
            .dir()
            .join(format!("chunks/plan-{}", self.generation()));
        // Lines come from the plan's own chunk files, so a retry sends
        // exactly the bytes the first attempt sent.
        let mut lines: Vec<(String, u64)> = Vec::new();
        for c in &self.plan.chunks {
            let path = self.store.dir().join(&c.file);
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
            let name = format!("retry-{attempt}-{id:05}.jsonl");
            let path = dir.join(&name);
            let mut w =
                BufWriter::new(File::create(&path).map_err(|e| Error::io("create", &path, e))?);
            let mut h = Sha256::new();
            for (l, _) in &lines[span.start..span.end] {
                w.write_all(l.as_bytes())
                    .and_then(|()| w.write_all(b"\n"))
                    .map_err(|e| Error::io("write", &path, e))?;
                h.update(l.as_bytes());
                h.update(b"\n");
            }
            w.into_inner()
                .map_err(|e| Error::io("write", &path, e.into_error()))?
                .sync_all()
                .map_err(|e| Error::io("write", &path, e))?;
            let u = UnitRecord::planned(
                id,
                attempt,
                format!("chunks/plan-{}/{name}", self.generation()),
                h.finalize().iter().map(|b| format!("{b:02x}")).collect(),
                span.requests() as u64,
                span.bytes,
                span.tokens,
            );
            self.store.put_unit(self.generation(), &u)?;
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

    /// Spend and chunk failures against the halt policy, and the failure
    /// rate when `check_rate` (it reads every request, so only after a merge).
    fn halt_reason(&self, units: &[UnitRecord], check_rate: bool) -> Result<Option<String>> {
        let halt = &self.spec.spec.halt;
        let spent: f64 = units.iter().map(|u| u.cost_usd).sum();
        if let Some(budget) = halt.max_cost_usd
            && spent > budget
        {
            return Ok(Some(format!(
                "spend {} passed halt.max_cost_usd {}",
                cost::usd(spent),
                cost::usd(budget)
            )));
        }
        if halt.on_chunk_failure
            && let Some(u) = units.iter().find(|u| {
                u.phase == Phase::Merged
                    && (u.batch_error.is_some() || u.remote_status.as_deref() == Some("expired"))
            })
        {
            return Ok(Some(format!(
                "chunk {} (batch {}) {}: {} (halt.on_chunk_failure)",
                u.id,
                u.batch_id.as_deref().unwrap_or("-"),
                u.remote_status.as_deref().unwrap_or("failed"),
                u.batch_error.as_deref().unwrap_or("expired")
            )));
        }
        if check_rate
            && let Some(max_rate) = self.spec.max_failure_rate
            && let Some(rate) = self.final_failure_rate()?
            && rate > max_rate
        {
            return Ok(Some(format!(
                "failure rate {:.1}% is above halt.max_failure_rate {:.1}%",
                rate * 100.0,
                max_rate * 100.0
            )));
        }
        Ok(None)
    }

    /// Final failures (no retry left) plus parse failures, over the rows
    /// with an outcome so far; `None` while too few rows say anything.
    fn final_failure_rate(&self) -> Result<Option<f64>> {
        let parser = self.parser()?;
        let max_attempts = self.spec.spec.retry.max_attempts;
        let (mut seen, mut bad) = (0u64, 0u64);
        for r in self.store.requests(self.generation()) {
            let r = r?;
            if r.seq.is_none() {
                continue;
            }
            match self.store.outcome(&r.fingerprint)? {
                Some(Outcome::Success(res)) => {
                    seen += 1;
                    bad += u64::from(parser.parse(&res.answer).is_err());
                }
                Some(Outcome::Failure(f)) => {
                    seen += 1;
                    let state = RequestState::Failed {
                        retryable: f.retryable,
                        attempts: f.attempts,
                    };
                    bad += u64::from(!machine::should_retry(state, max_attempts));
                }
                None => {}
            }
        }
        const MIN_ROWS: u64 = 20;
        Ok((seen >= MIN_ROWS).then(|| bad as f64 / seen as f64))
    }

    /// `batchgrader cancel`: stop the batches that are out and mark the job
    /// cancelled, so that `resume` collects partial results but submits
    /// nothing new. Returns how many batches were asked to stop.
    pub async fn cancel(&mut self) -> Result<usize> {
        let mut units = self.ensure_units()?;
        for u in units.iter_mut() {
            // A create may have happened before a crash: find it to cancel
            // it, or make sure none will be made.
            if u.phase == Phase::Creating {
                let found = self.find_created(u).await?;
                match found {
                    Some(b) => self.adopt(u, &b.id, b.status.as_str())?,
                    None => {
                        u.phase = Phase::Uploaded;
                        self.store.put_unit(self.generation(), u)?;
                    }
                }
            }
        }
        self.store.set_cancelled(Some(state::now_secs()))?;
        let out = units.iter().filter(|u| u.phase == Phase::Submitted).count();
        self.cancel_in_flight(&mut units).await;
        let snap = self.snapshot(
            &units,
            RunState::Halted,
            Some("cancelled: `batchgrader resume` collects what the batches finished; `batchgrader apply SPEC` starts the job again".into()),
            None,
        );
        status::write(self.store.dir(), &snap)
            .map_err(|e| Error::io("write", status::path(self.store.dir()), e))?;
        Ok(out)
    }

    pub async fn cancel_in_flight(&self, units: &mut [UnitRecord]) {
        for u in units.iter_mut() {
            if u.phase == Phase::Submitted
                && let Some(id) = &u.batch_id
            {
                match self.client.cancel_batch(id).await {
                    Ok(_) => self.event(Some(u.id), &format!("cancelled batch {id}")),
                    Err(e) => self.event(Some(u.id), &format!("could not cancel batch {id}: {e}")),
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
        let to_grade = self.plan.outstanding;
        let succeeded: u64 = units
            .iter()
            .filter(|u| u.phase == Phase::Merged)
            .map(|u| u.completed)
            .sum();
        let failed_now: u64 = units
            .iter()
            .filter(|u| u.phase == Phase::Merged)
            .map(|u| u.failed)
            .sum();
        // Failures of one attempt that a later attempt retries are not final.
        let retried: u64 = units
            .iter()
            .filter(|u| u.attempt > 1)
            .map(|u| u.requests)
            .sum();
        let failed = failed_now.saturating_sub(retried);
        Snapshot {
            job: self.job().to_string(),
            state,
            pid: (state == RunState::Running).then(std::process::id),
            updated_at: state::now_secs(),
            started_at: Some(self.started_at),
            model: self.plan.model.clone(),
            totals: Totals {
                rows: self.plan.rows,
                to_grade,
                already_done: self.plan.already_done,
                succeeded,
                failed,
                pending: to_grade.saturating_sub(succeeded + failed),
            },
            estimated_cost_usd: self
                .plan
                .estimate
                .as_ref()
                .map(|e| e.expected.or(e.high).unwrap_or(e.low)),
            actual_cost_usd: units.iter().map(|u| u.cost_usd).sum(),
            output_path: output,
            message,
            receipt: crate::status::Receipt::default(),
            outage_since: None,
            units: units.iter().map(UnitStatus::from).collect(),
        }
    }

    fn write_status(&self, units: &[UnitRecord], state: RunState, message: Option<String>) {
        let snap = self.snapshot(units, state, message, None);
        self.progress.table(&snap);
        if let Err(e) = status::write(self.store.dir(), &snap) {
            self.ui.warn(&format!("cannot write status.json: {e}"));
        }
    }

    /// Write the output (unless interrupted or detached with work left),
    /// the final status, and the summary.
    async fn finish(&mut self, ending: Ending) -> Result<(Ending, Summary)> {
        let units = self.store.units(self.generation())?;
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
        status::write(self.store.dir(), &snap)
            .map_err(|e| Error::io("write", status::path(self.store.dir()), e))?;
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

/// Write the output file from the state: every input row in order.
/// Returns the counts and, for number/label parses, the value distribution.
pub fn write_output_file(
    store: &JobStore,
    spec: &CheckedSpec,
    plan: &PlanRecord,
) -> Result<(Written, Vec<(String, u64)>)> {
    write_output_to(
        store,
        spec,
        plan,
        &spec.output_path,
        spec.spec.output.format,
    )
}

/// Same, to any path and format (`export`).
pub fn write_output_to(
    store: &JobStore,
    spec: &CheckedSpec,
    plan: &PlanRecord,
    path: &Path,
    format: Option<crate::spec::Format>,
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
    let written = output::write(&sources, path, format, &added, |row| {
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
    let mut f = File::open(path).map_err(|e| Error::io("read", path, e))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| Error::io("read", path, e))?;
    let got: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
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

/// `events.jsonl` keeps the events of this many runs.
const KEEP_EVENT_RUNS: usize = 10;
const RUN_MARK: &str = "\"event\":\"run started";

/// Drop the events of all but the last `keep - 1` runs (this run adds one).
fn prune_events(dir: &Path, keep: usize) {
    let path = dir.join("events.jsonl");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return;
    };
    let starts: Vec<usize> = text
        .match_indices(RUN_MARK)
        .map(|(i, _)| text[..i].rfind('\n').map_or(0, |n| n + 1))
        .collect();
    if starts.len() < keep {
        return;
    }
    let from = starts[starts.len() + 1 - keep];
    let tmp = dir.join(".events.jsonl.tmp");
    if std::fs::write(&tmp, &text[from..]).is_ok() {
        let _ = std::fs::rename(&tmp, &path);
    }
}

/// One line in `events.jsonl`: what happened, when.
fn append_event(dir: &Path, unit: Option<u32>, msg: &str) {
    #[derive(Serialize)]
    struct Ev<'a> {
        ts: String,
        chunk: Option<u32>,
        event: &'a str,
    }
    let line = serde_json::to_string(&Ev {
        ts: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        chunk: unit,
        event: msg,
    })
    .expect("events serialize");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("events.jsonl"))
    {
        let _ = writeln!(f, "{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_keep_the_last_runs() {
        let dir = tempfile::tempdir().unwrap();
        for run in 0..15 {
            prune_events(dir.path(), 10);
            append_event(dir.path(), None, &format!("run started (pid {run})"));
            append_event(dir.path(), Some(1), &format!("work of run {run}"));
        }
        let text = std::fs::read_to_string(dir.path().join("events.jsonl")).unwrap();
        assert_eq!(text.matches(RUN_MARK).count(), 10);
        assert!(text.contains("work of run 14") && text.contains("work of run 5"));
        assert!(!text.contains("work of run 4\""), "{text}");
    }

    #[test]
    fn custom_ids_of_our_lines() {
        assert_eq!(
            line_custom_id(r#"{"custom_id":"r12","method":"POST"}"#),
            Some("r12")
        );
        assert_eq!(line_custom_id(r#"{"method":"POST"}"#), None);
    }
}
