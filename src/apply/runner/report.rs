//! What a run shows: the status snapshot and the end-of-run summary.

use super::*;

impl<'a, B: BatchBackend> Runner<'a, B> {
    pub(super) fn snapshot(
        &self,
        units: &[UnitRecord],
        state: RunState,
        message: Option<String>,
        output: Option<String>,
    ) -> Snapshot {
        let receipt = decide::receipt(units);
        let paid = receipt.paid_usd;
        Snapshot {
            output_path: output,
            receipt,
            message,
            outage_since: self.outage_since,
            step: self.step.clone().filter(|_| state == RunState::Running),
            units: units.iter().map(unit_status).collect(),
            ..crate::apply::snapshot_of(
                self.job(),
                self.plan,
                &self.tally,
                state,
                self.started_at,
                paid,
            )
        }
    }

    pub(super) fn write_status(
        &self,
        units: &[UnitRecord],
        state: RunState,
        message: Option<String>,
    ) {
        let snap = self.snapshot(units, state, message, None);
        self.progress.table(&snap);
        if let Err(e) = status::write(self.layout(), &snap) {
            self.ui.warn(&format!("cannot write status.json: {e}"));
        }
    }

    /// Write the output (unless interrupted or detached with work left),
    /// the final status, and the summary.
    pub(super) async fn finish(&mut self, ending: Ending) -> Result<(Ending, Summary)> {
        let mut units = self.store.units(self.generation())?;
        if ending == Ending::Finished {
            self.clean_pending(&mut units).await?;
        }
        // The tally follows each merge; at a finish nothing may be pending,
        // so a count that says otherwise (rows of one text share an outcome
        // across chunks) is made again from the store. Other endings count
        // again too: they are rare, and `status` shows the result for long.
        if ending != Ending::Finished || self.tally.pending > 0 {
            self.tally = self.scan_tally()?;
        }
        let given_up: Vec<String> = units
            .iter()
            .filter_map(|u| u.given_up.as_ref().map(|r| format!("chunk {}: {r}", u.id)))
            .collect();
        let (state, message) = match &ending {
            Ending::Finished if !given_up.is_empty() => (
                RunState::Finished,
                Some(format!(
                    "given up for now: {}; its rows are not graded yet: `batchgrader resume` tries again",
                    given_up.join("; ")
                )),
            ),
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
        // A halt that refused the start (the budget) writes nothing: a file
        // of "not graded" rows must not replace an earlier, better output.
        let write_output = match ending {
            Ending::Finished => true,
            Ending::Halted(_) => !self.refused_start,
            Ending::Detached | Ending::Interrupted => false,
        };
        let mut written = None;
        if write_output {
            self.event(None, "writing the output");
            self.step = Some(("writing the output".into(), state::now_secs()));
            self.write_status(&units, RunState::Running, None);
            let began = Instant::now();
            written = Some(write_output_file(
                self.store, self.spec, self.plan, self.ui,
            )?);
            let bytes = std::fs::metadata(&self.spec.output_path).map_or(0, |m| m.len());
            self.throughput.add("output", bytes, began.elapsed());
            self.step = None;
            kill_point("output");
        }
        let out_path = write_output.then(|| self.spec.output_path.display().to_string());
        let snap = self.snapshot(&units, state, message.clone(), out_path.clone());
        self.progress.clear();
        status::write(self.layout(), &snap)
            .map_err(|e| Error::io("write", self.layout().status(), e))?;
        if let Some(line) = self.throughput.line() {
            self.event(None, &line);
        }
        let summary = Summary::of(crate::apply::RunEnd {
            job: self.job(),
            ending: &ending,
            plan: self.plan,
            graded: written.unwrap_or_default(),
            snap: &snap,
            output_path: out_path,
            simulated: self.simulated,
            message,
        });
        Ok((ending, summary))
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
    if u.given_up.is_some() {
        s.remote_status = Some("given up".into());
    }
    s
}
