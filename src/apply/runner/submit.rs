//! Creating batches: stage, record the intent, create; find what an
//! earlier create made before creating again; cancel.

use super::*;

impl<'a, B: BatchBackend> Runner<'a, B> {
    /// Stage (if not yet) and create the batch.
    pub(super) async fn submit(&mut self, u: &mut UnitRecord) -> Result<()> {
        if u.phase == Phase::Planned {
            let path = self.layout().resolve(&u.file);
            verify_sha256(&path, &u.sha256)?;
            let name = format!("{}.chunk-{}.attempt-{}.jsonl", self.job(), u.id, u.attempt);
            let began = Instant::now();
            match self.backend.stage(&path, &name).await {
                Ok(staged) => {
                    self.frame
                        .throughput
                        .borrow_mut()
                        .add("upload", u.bytes, began.elapsed());
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
    pub(super) async fn create(&mut self, u: &mut UnitRecord) -> Result<()> {
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

    pub(super) fn adopt(&mut self, u: &mut UnitRecord, b: &RemoteBatch) -> Result<()> {
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
    pub(super) async fn recover(&mut self, u: &mut UnitRecord) -> Result<()> {
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

    /// Units whose create may have happened (a crash, an unclear answer):
    /// adopt the batch if the provider has it, so that it can be cancelled,
    /// or make sure none will be created. One the provider cannot be asked
    /// about stays `creating`; the next run looks again.
    pub(super) async fn settle_creating(&mut self, units: &mut [UnitRecord]) -> Result<()> {
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

    /// After `cancel`, a unit left `creating` is only looked for: adopted
    /// (its batch is collected) or put back, never created.
    pub(super) async fn settle(&mut self, u: &mut UnitRecord) -> Result<()> {
        match self
            .backend
            .find(u.file_id.as_deref(), &self.identity(u))
            .await
        {
            Ok(Some(b)) => {
                self.answered(u);
                self.adopt(u, &b)
            }
            Ok(None) => {
                self.answered(u);
                u.phase = Phase::Uploaded;
                self.put(u)
            }
            Err(e) => self.step_failed(u, "find", e).await,
        }
    }

    /// `batchgrader cancel`: stop the batches that are out and mark the job
    /// cancelled, so that `resume` collects partial results but submits
    /// nothing new. Returns how many batches were asked to stop, and the ids
    /// of those that could not be reached.
    /// `None` when there is nothing to cancel (no batch is or may be out,
    /// and nothing is left to submit, or the job is cancelled already): then
    /// nothing is changed.
    pub async fn cancel(&mut self) -> Result<Option<(usize, Vec<String>)>> {
        let existing = self.frame.store.units(self.generation())?;
        let maybe_out = existing
            .iter()
            .any(|u| matches!(u.phase, Phase::Creating | Phase::Submitted));
        let already = self.frame.store.cancelled_at()?.is_some();
        if !maybe_out && (already || self.scan_tally()?.pending == 0) {
            return Ok(None);
        }
        let mut units = self.ensure_units()?;
        self.settle_creating(&mut units).await?;
        self.frame.store.set_cancelled(Some(state::now_secs()))?;
        let out = units.iter().filter(|u| u.phase == Phase::Submitted).count();
        let unreached = self.cancel_in_flight(&mut units).await;
        self.tally = self.scan_tally()?;
        let snap = self.snapshot(
            &units,
            RunState::Halted,
            Some(format!("{}: `batchgrader resume {}` collects what the batches finished; `batchgrader apply SPEC` starts the job again", status::CANCELLED_BY, self.job())),
            None,
        );
        status::write(self.layout(), &snap)
            .map_err(|e| Error::io("write", self.layout().status(), e))?;
        Ok(Some((out, unreached)))
    }

    /// Ask every batch that is out to stop. A transient failure is tried
    /// again with the usual backoff for up to a minute per batch: a batch
    /// left running is money spent after the user (or the policy) said stop.
    /// Returns the ids of the batches that could not be reached.
    pub async fn cancel_in_flight(&self, units: &mut [UnitRecord]) -> Vec<String> {
        const CANCEL_GIVE_UP_SECS: u64 = 60;
        let mut unreached = Vec::new();
        for u in units.iter_mut() {
            let (Phase::Submitted, Some(id)) = (u.phase, u.batch_id.clone()) else {
                continue;
            };
            let mut backoff = None;
            loop {
                let e = match self.backend.cancel(&id).await {
                    Ok(()) => {
                        self.event(Some(u.id), &format!("cancelled batch {id}"));
                        // Until the next poll says more, `status` shows the
                        // batch as asked to stop, not as it last was.
                        u.remote_status = Some("cancelling".into());
                        let _ = self.put(u);
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
                        unreached.push(id.clone());
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
        unreached
    }
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
