//! Collecting batches: poll, fetch result files, classify and merge every
//! line, the ledger, clean-up, and the retry chunks.

use super::*;
use crate::apply::frame::failed_state;

impl<'a, B: BatchBackend> Runner<'a, B> {
    pub(super) fn schedule_poll(&mut self, id: u32, fresh: bool) {
        let interval = self.frame.spec.run.poll_interval.as_millis() as u64;
        let max = self.frame.spec.run.poll_max_interval.as_millis() as u64;
        let previous = if fresh {
            None
        } else {
            self.polls.get(&id).map(|(_, d)| d.as_millis() as u64)
        };
        let next = next_poll_interval_ms(previous, interval, max);
        let d = Duration::from_millis(next);
        self.polls.insert(id, (Instant::now() + d, d));
    }

    pub(super) async fn poll(&mut self, u: &mut UnitRecord) -> Result<()> {
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
        let poll_secs = self.frame.spec.run.poll_interval.as_secs();
        match (
            decide::on_status(&batch.state, u.creates, poll_secs),
            batch.state,
        ) {
            (StatusVerdict::KeepPolling, RemoteState::Running { done, failed, .. }) => {
                let ((completed, failed), moved) =
                    decide::remote_progress((u.completed, u.failed), (done, failed));
                u.completed = completed;
                u.failed = failed;
                if moved && !(changed || was_parked) {
                    // Kept, so that what the live view showed is what
                    // `status` shows after the run stops.
                    self.put(u)?;
                }
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

    pub(super) async fn download(&mut self, u: &mut UnitRecord) -> Result<()> {
        let dir = self.layout().results_dir();
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("create", &dir, e))?;
        for r in u.results.clone() {
            let dest = self
                .layout()
                .result_file(self.generation(), u.id, u.creates, &r.name);
            if dest.exists() {
                continue;
            }
            let began = Instant::now();
            match self.backend.fetch(&r, &dest).await {
                Ok(bytes) => {
                    self.frame
                        .throughput
                        .borrow_mut()
                        .add("download", bytes, began.elapsed());
                    // The unit's run of failures ends once its results merge
                    // (a file that turns out not to be JSONL is fetched again).
                    self.provider_up();
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
        u.phase = Phase::Downloaded;
        self.put(u)
    }

    pub(super) fn request_of(&self, id: &str) -> Result<Option<state::RequestRecord>> {
        let Some(row) = id.strip_prefix('r').and_then(|n| n.parse::<u64>().ok()) else {
            return Ok(None);
        };
        Ok(self.frame.store.request(self.generation(), row)?)
    }

    /// Classify every line of the result files and account for every
    /// request of the unit (one in no line gets `decide::missing_line`).
    pub(super) async fn ingest(&mut self, u: &mut UnitRecord) -> Result<()> {
        let began = Instant::now();
        let bytes: u64 = u
            .results
            .iter()
            .filter_map(|r| {
                let path = self
                    .layout()
                    .result_file(self.generation(), u.id, u.creates, &r.name);
                std::fs::metadata(path).ok().map(|m| m.len())
            })
            .sum();
        let merged = self.ingest_files(u).await;
        self.frame
            .throughput
            .borrow_mut()
            .add("ingest", bytes, began.elapsed());
        merged
    }

    async fn ingest_files(&mut self, u: &mut UnitRecord) -> Result<()> {
        let ids = unit_custom_ids(&self.layout().resolve(&u.file))?;
        let submit = self.identity(u);
        let mut seen: HashMap<String, ResultLine> = HashMap::with_capacity(ids.len());
        // Lines of another submit, and repeats of an id: named (the first
        // few), never merged.
        let mut refused = 0u64;
        for r in u.results.clone() {
            let path = self
                .layout()
                .result_file(self.generation(), u.id, u.creates, &r.name);
            if !path.exists() {
                continue;
            }
            let f = File::open(&path).map_err(|e| Error::io("read", &path, e))?;
            let (mut good, mut bad) = (0u64, 0u64);
            let mut first_bad: Option<(usize, String)> = None;
            // Bytes, not text: a file that is not UTF-8 is bad lines, not a
            // reason to stop the job.
            // A line is held up to a cap: a result file from a hostile or
            // broken server may be one endless line.
            let mut reader = BufReader::new(f);
            let mut buf = Vec::new();
            let mut n = 0usize;
            while let Some(read) = bounded::read_line_capped(&mut reader, &mut buf, MAX_RESULT_LINE)
                .map_err(|e| Error::io("read", &path, e))?
            {
                n += 1;
                if let bounded::Line::TooLong { len } = read {
                    bad += 1;
                    first_bad.get_or_insert((
                        n,
                        format!(
                            "the line is {len} bytes long, above the {} a result line may be",
                            bounded::cap_text(MAX_RESULT_LINE)
                        ),
                    ));
                    continue;
                }
                let line = String::from_utf8_lossy(&buf);
                if line.trim().is_empty() {
                    continue;
                }
                let outcome = match self.backend.classify(&line, &submit) {
                    Ok(o) => o,
                    Err(LineError::Unreadable(why)) => {
                        bad += 1;
                        first_bad.get_or_insert((n, why));
                        continue;
                    }
                    Err(LineError::NotThisSubmit(why)) => {
                        good += 1;
                        self.not_merged(
                            u.id,
                            &mut refused,
                            &format!("{}:{n}", path.display()),
                            &why,
                        );
                        continue;
                    }
                };
                good += 1;
                if !ids.contains(outcome.custom_id()) {
                    self.event(
                        Some(u.id),
                        &format!(
                            "{}:{}: ignoring a result for `{}`, which this chunk did not send",
                            path.display(),
                            n,
                            outcome.custom_id()
                        ),
                    );
                    continue;
                }
                if seen.contains_key(outcome.custom_id()) {
                    let why = format!(
                        "a second result for `{}` (the first is kept)",
                        outcome.custom_id()
                    );
                    self.not_merged(u.id, &mut refused, &format!("{}:{n}", path.display()), &why);
                    continue;
                }
                seen.insert(outcome.custom_id().to_string(), outcome);
            }
            if let Some((n, why)) = first_bad {
                let place = format!("{}:{n}", path.display());
                let failed_fetches = u
                    .backoff
                    .as_ref()
                    .filter(|b| b.step == "download")
                    .map_or(0, |b| b.failures);
                if decide::bad_lines(good, bad, failed_fetches) == decide::BadLines::FetchAgain {
                    // Not a result file at all (an HTML page, a proxy's
                    // error): fetch it again later rather than pay for its
                    // requests twice.
                    let _ = std::fs::remove_file(&path);
                    u.phase = Phase::Ended;
                    self.put(u)?;
                    let e = ProviderError::new(
                        format!("read {} file {}", r.name, r.id),
                        crate::provider::ErrorKind::Protocol,
                    )
                    .with_detail(format!("{place}: not a result line ({why})"));
                    return self.step_failed(u, "download", e).await;
                }
                self.event(
                    Some(u.id),
                    &format!(
                        "{bad} line{} of {} {} not result lines (first at {place}: {why}); their requests count as not executed{}",
                        if bad == 1 { "" } else { "s" },
                        r.name,
                        if bad == 1 { "is" } else { "are" },
                        if good == 0 {
                            format!(
                                " (the file was fetched {} times and never held a result line)",
                                decide::FETCHES_OF_AN_UNREADABLE_FILE
                            )
                        } else {
                            String::new()
                        }
                    ),
                );
            }
        }
        let end = u.end.clone().unwrap_or(state::EndKind::Completed);
        // Each request's state before and after this merge, to move the tally.
        let mut shifts: Vec<(RequestState, RequestState)> = Vec::with_capacity(ids.len());
        let mut successes = Vec::new();
        let mut failures = Vec::new();
        let (mut input_tokens, mut output_tokens) = (0u64, 0u64);
        let (mut cache_write, mut cache_read, mut reasoning) = (0u64, 0u64, 0u64);
        for id in &ids.in_order {
            let Some(req) = self.request_of(id)? else {
                continue;
            };
            let earlier = self.frame.store.outcome(&req.fingerprint)?;
            // Runs of earlier attempts carry over: a request that expired
            // twice and then failed when it ran has run once.
            let (earlier_runs, earlier_rounds) = match &earlier {
                Some(Outcome::Failure(f)) => (f.runs(), Some(f.attempts)),
                _ => (0, None),
            };
            // Counted from the request's own rounds: one granted a fresh
            // set of attempts (`--retry-failed`) starts again from none.
            let attempts = decide::rounds_after(earlier_rounds, u.attempt);
            let before = self.frame.request_state(earlier);
            let failure = |code, message, retryable, ran: bool| FailureRecord {
                code,
                message,
                retryable,
                attempts,
                ran,
                runs: Some(earlier_runs + u32::from(ran)),
            };
            match seen.remove(id) {
                Some(ResultLine::Success {
                    answer,
                    input_tokens: i,
                    output_tokens: o,
                    cache_write_tokens: w,
                    cache_read_tokens: r,
                    reasoning_tokens: t,
                    ..
                }) => {
                    input_tokens += i;
                    output_tokens += o;
                    cache_write += w;
                    cache_read += r;
                    reasoning += t;
                    let parsed = self.frame.parser.parse(&answer).is_ok();
                    shifts.push((before, RequestState::Succeeded { parsed }));
                    successes.push((
                        req.fingerprint,
                        ResultRecord {
                            answer,
                            input_tokens: i,
                            output_tokens: o,
                            cache_write_tokens: w,
                            cache_read_tokens: r,
                            reasoning_tokens: t,
                        },
                    ));
                }
                Some(ResultLine::Failure {
                    code,
                    message,
                    retryable,
                    ran,
                    ..
                }) => {
                    let f = failure(code, message, retryable, ran);
                    shifts.push((before, failed_state(&f)));
                    failures.push((req.fingerprint, f));
                }
                None => {
                    let (code, message, retryable) = decide::missing_line(&end);
                    let f = failure(code, message, retryable, false);
                    shifts.push((before, failed_state(&f)));
                    failures.push((req.fingerprint, f));
                }
            }
        }
        // The provider's own count of the batch is what it bills.
        // Its cached input is then its own count too: a unit recorded
        // before that count was read has none, and its input holds them.
        if let Some(b) = u.billed {
            input_tokens = b.input_tokens;
            output_tokens = b.output_tokens;
            cache_read = b.cache_read_tokens;
            reasoning = b.reasoning_tokens;
        }
        u.input_tokens = input_tokens;
        u.output_tokens = output_tokens;
        u.cache_write_tokens = cache_write;
        u.cache_read_tokens = cache_read;
        u.reasoning_tokens = reasoning;
        if let Some(p) = self.frame.plan.price.as_ref() {
            let (i, o, w, r) = (input_tokens, output_tokens, cache_write, cache_read);
            u.cost_usd = cost::actual_cached(p, i, o, w, r);
            u.standard_cost_usd = cost::standard_cached(p, i, o, w, r);
        }
        u.completed = successes.len() as u64;
        u.failed = failures.len() as u64;
        u.backoff = None;
        u.phase = Phase::Merged;
        self.frame
            .store
            .merge_outcomes(&successes, &failures, u, self.generation())?;
        let max_attempts = self.frame.spec.run.max_attempts;
        for (before, after) in shifts {
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
    pub(super) fn write_ledger(&self, u: &mut UnitRecord) -> Result<()> {
        if u.ledger_written {
            return Ok(());
        }
        let Some(batch_id) = u.batch_id.clone() else {
            return Ok(());
        };
        self.frame.record_usage(&LedgerEntry {
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            cache_write_tokens: u.cache_write_tokens,
            cache_read_tokens: u.cache_read_tokens,
            reasoning_tokens: u.reasoning_tokens,
            cache_saved_usd: self
                .frame
                .cache_saved(u.cache_write_tokens, u.cache_read_tokens),
            cost_usd: u.cost_usd,
            standard_cost_usd: u.standard_cost_usd,
            ..self.frame.ledger_entry(&batch_id)
        })?;
        u.ledger_written = true;
        self.put(u)
    }

    /// Delete the provider's copies once they are safely merged; they would
    /// otherwise count against storage for 30 days (OpenAPI spec,
    /// `FileExpirationAfter`), and Azure caps a resource at 500 batch files.
    /// True when done: deleted, or already gone. A failure is harmless to
    /// the job; a transient one is tried again at the next start and finish.
    pub(super) async fn clean_remote(&self, u: &UnitRecord) -> bool {
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
    pub(super) async fn clean_pending(&mut self, units: &mut [UnitRecord]) -> Result<()> {
        for u in units.iter_mut().filter(|u| u.cleanup_pending) {
            if self.clean_remote(u).await {
                u.cleanup_pending = false;
                self.put(u)?;
            }
        }
        Ok(())
    }

    /// Every outstanding request of the plan, counted by where it stands.
    /// `outcomes.jsonl` damaged (bad lines, or cut or emptied): set it
    /// aside, keep its good lines, then give each request of a merged unit
    /// that has no outcome the one its unit's downloaded results hold (the
    /// latest attempt first). A unit whose result files are gone is fetched
    /// again; a file the provider no longer has counts its requests as not
    /// executed, so they are sent again. Never a silent drop.
    pub(super) fn repair_outcomes(&mut self, units: &mut [UnitRecord]) -> Result<()> {
        let Some(damage) = self.frame.store.outcomes_damage()? else {
            return Ok(());
        };
        let aside = self.frame.store.rebuild_outcomes()?;
        let mut order: Vec<usize> = (0..units.len())
            .filter(|&i| units[i].phase == Phase::Merged)
            .collect();
        order.sort_by_key(|&i| std::cmp::Reverse((units[i].attempt, units[i].id)));
        let mut filled: HashSet<String> = HashSet::new();
        let (mut rebuilt, mut refetch) = (0usize, 0usize);
        for i in order {
            let u = &mut units[i];
            let ids = unit_custom_ids(&self.layout().resolve(&u.file))?;
            let mut lacking = Vec::new();
            for id in ids.in_order {
                let Some(req) = self.request_of(&id)? else {
                    continue;
                };
                if !filled.contains(&req.fingerprint)
                    && self.frame.store.outcome(&req.fingerprint)?.is_none()
                {
                    lacking.push((id, req.fingerprint));
                }
            }
            if lacking.is_empty() {
                continue;
            }
            let paths: Vec<std::path::PathBuf> = u
                .results
                .iter()
                .map(|r| {
                    self.layout()
                        .result_file(self.generation(), u.id, u.creates, &r.name)
                })
                .collect();
            if paths.iter().any(|p| !p.exists()) {
                u.phase = Phase::Ended;
                self.frame.store.put_unit(self.generation(), u)?;
                refetch += 1;
                continue;
            }
            let submit = self.identity(u);
            let mut seen: HashMap<String, ResultLine> = HashMap::new();
            for path in &paths {
                let f = File::open(path).map_err(|e| Error::io("read", path, e))?;
                let mut reader = BufReader::new(f);
                let mut buf = Vec::new();
                while let Some(read) =
                    bounded::read_line_capped(&mut reader, &mut buf, MAX_RESULT_LINE)
                        .map_err(|e| Error::io("read", path, e))?
                {
                    if read != bounded::Line::Whole {
                        continue;
                    }
                    if let Ok(o) = self
                        .backend
                        .classify(&String::from_utf8_lossy(&buf), &submit)
                    {
                        // The first result of an id is the one ingest kept.
                        seen.entry(o.custom_id().to_string()).or_insert(o);
                    }
                }
            }
            let end = u.end.clone().unwrap_or(state::EndKind::Completed);
            let mut entries = Vec::with_capacity(lacking.len());
            for (id, fp) in lacking {
                let outcome = match seen.remove(&id) {
                    Some(ResultLine::Success {
                        answer,
                        input_tokens,
                        output_tokens,
                        cache_write_tokens,
                        cache_read_tokens,
                        reasoning_tokens,
                        ..
                    }) => Outcome::Success(ResultRecord {
                        answer,
                        input_tokens,
                        output_tokens,
                        cache_write_tokens,
                        cache_read_tokens,
                        reasoning_tokens,
                    }),
                    Some(ResultLine::Failure {
                        code,
                        message,
                        retryable,
                        ran,
                        ..
                    }) => Outcome::Failure(FailureRecord {
                        code,
                        message,
                        retryable,
                        attempts: u.attempt,
                        ran,
                        runs: Some(u32::from(ran)),
                    }),
                    None => {
                        let (code, message, retryable) = decide::missing_line(&end);
                        Outcome::Failure(FailureRecord {
                            code,
                            message,
                            retryable,
                            attempts: u.attempt,
                            ran: false,
                            runs: Some(0),
                        })
                    }
                };
                filled.insert(fp.clone());
                entries.push((fp, outcome));
            }
            rebuilt += entries.len();
            self.frame.store.add_outcomes(&entries)?;
        }
        let msg = format!(
            "repaired damaged state ({damage}): the damaged file is kept as {}; {rebuilt} outcome{} rebuilt from results/, {refetch} chunk{} to download again",
            aside.display(),
            if rebuilt == 1 { "" } else { "s" },
            if refetch == 1 { "" } else { "s" },
        );
        self.event(None, &msg);
        self.frame.ui.warn(&msg);
        Ok(())
    }

    /// A result line left out of the merge (another submit's, a repeat):
    /// named in the events, the first few of a unit.
    fn not_merged(&self, unit: u32, refused: &mut u64, place: &str, why: &str) {
        *refused += 1;
        if *refused <= 5 {
            self.event(Some(unit), &format!("{place}: not merged: {why}"));
        }
    }

    pub(super) fn scan_tally(&self) -> Result<Tally> {
        self.frame.tally()
    }

    /// Retryable failures with attempts left go into new units.
    pub(super) fn plan_retries(&mut self, units: &[UnitRecord]) -> Result<Vec<UnitRecord>> {
        let max_attempts = self.frame.spec.run.max_attempts;
        // A request of a unit that is not merged (given up for this run,
        // maybe with its batch out or its results unread) is not sent
        // again: that unit's merge decides, in the next run. Sending it
        // now would pay for it twice.
        let mut held = HashSet::new();
        for u in units.iter().filter(|u| u.phase != Phase::Merged) {
            held.extend(unit_custom_ids(&self.layout().resolve(&u.file))?.in_order);
        }
        // Custom id → prompt tokens of each request to send again.
        let mut rows: HashMap<String, u64> = HashMap::new();
        let meter = self
            .frame
            .ui
            .progress_rows(self.frame.plan.rows, "looking for requests to retry");
        for r in self.frame.store.requests(self.generation()) {
            let r = r?;
            if r.row.is_multiple_of(4096) {
                meter.set_position(r.row);
            }
            if r.seq.is_none() {
                continue;
            }
            // A success is never sent again: the index says so without
            // reading its line (most requests, on a big job).
            if self
                .frame
                .store
                .succeeded(crate::plan::fingerprint_bits(&r.fingerprint))?
            {
                continue;
            }
            let state = self
                .frame
                .request_state(self.frame.store.outcome(&r.fingerprint)?);
            let id = custom_id(r.row);
            if decide::should_retry(state, max_attempts) && !held.contains(&id) {
                rows.insert(id, r.tokens);
            }
        }
        meter.finish_and_clear();
        if rows.is_empty() {
            return Ok(vec![]);
        }
        let attempt = units.iter().map(|u| u.attempt).max().unwrap_or(1) + 1;
        let first_id = units.iter().map(|u| u.id).max().unwrap_or(0) + 1;
        // Lines come from the plan's own chunk files, so a retry sends
        // exactly the bytes the first attempt sent.
        let mut lines: Vec<(String, u64)> = Vec::new();
        for c in &self.frame.plan.chunks {
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
            self.backend.limits(),
            self.frame.spec.chunking().max_requests,
            self.frame.spec.max_bytes,
            self.frame.spec.chunking().max_tokens,
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
}

/// Poll backoff: start at `interval`, grow by half each time, cap at `max`.
pub fn next_poll_interval_ms(previous_ms: Option<u64>, interval_ms: u64, max_ms: u64) -> u64 {
    match previous_ms {
        None => interval_ms.min(max_ms),
        Some(p) => (p + p / 2).clamp(interval_ms.min(max_ms), max_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
