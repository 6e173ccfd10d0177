//! What a batch run shows (its status snapshot) and how it closes (the lane's part of the frame's finish).

use super::*;

impl<'a, B: BatchBackend> Runner<'a, B> {
    pub(super) fn snapshot(
        &self,
        units: &[UnitRecord],
        state: RunState,
        message: Option<String>,
        output: Option<String>,
    ) -> Snapshot {
        let receipt = decide::receipt(units, self.frame.plan.price.as_ref());
        let paid = receipt.paid_usd;
        Snapshot {
            output_path: output,
            receipt,
            message,
            outage_since: self.outage_since,
            step: self.step.clone().filter(|_| state == RunState::Running),
            units: units.iter().map(unit_status).collect(),
            deadline: self.frame.deadline,
            ..crate::apply::snapshot_of(
                self.job(),
                self.frame.plan,
                &self.tally,
                state,
                self.frame.started_at,
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
        self.frame.show(&self.snapshot(units, state, message, None));
    }

    /// The batch lane's closing: collect the clean-ups a finished run owes,
    /// count again, say what was given up; the frame does the rest.
    pub(super) async fn finish(&mut self, ending: Ending) -> Result<(Ending, Summary)> {
        let mut units = self.frame.store.units(self.generation())?;
        if ending == Ending::Finished {
            self.clean_pending(&mut units).await?;
        }
        // Twins are looked for before the output is written (not after
        // Ctrl-C, which must stop at once: the next run looks).
        if ending != Ending::Interrupted {
            self.settle_twins(&units).await?;
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
        let job = self.job().to_string();
        let message = match &ending {
            Ending::Finished if !given_up.is_empty() => Some(format!(
                "given up for now: {}; its rows are not graded yet: `batchgrader resume {job}` tries again",
                given_up.join("; ")
            )),
            Ending::Finished => None,
            Ending::Detached => Some(format!(
                "detached: batches keep running; `batchgrader resume {job}` collects them"
            )),
            Ending::Interrupted => Some(format!(
                "interrupted: state is saved and batches keep running; run `batchgrader resume {job}` to continue"
            )),
            Ending::Halted(r) => Some(format!("halted: {r}")),
            Ending::Deadline => Some(
                "the deadline is near: the batches were cancelled and collected; the rows left go to the direct lane"
                    .to_string(),
            ),
        };
        let message = match (message, self.twins_line()) {
            (Some(m), Some(t)) => Some(format!("{m}; {t}")),
            (m, t) => m.or(t),
        };
        self.step = None;
        self.frame
            .finish(ending, message, |state, message, output| {
                self.snapshot(&units, state, message, output)
            })
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
