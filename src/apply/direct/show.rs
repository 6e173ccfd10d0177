//! What a direct run shows and books: the rates and the live view, the
//! status snapshot, the plain progress lines, the ledger lines, and the
//! lane's closing words for the frame's finish.

use super::*;

impl DirectRunner<'_> {
    pub(super) fn rates(&mut self) -> (f64, f64) {
        let now = Instant::now();
        let tokens = self.run.input + self.run.output;
        self.samples.push_back((now, self.done, tokens));
        while self.samples.len() > 2
            && now.duration_since(self.samples[0].0) > Duration::from_secs(10)
        {
            self.samples.pop_front();
        }
        let (t0, d0, k0) = self.samples[0];
        let secs = now.duration_since(t0).as_secs_f64();
        if secs < 0.2 {
            return (0.0, 0.0);
        }
        ((self.done - d0) as f64 / secs, (tokens - k0) as f64 / secs)
    }

    pub(super) fn view(&mut self, in_flight: usize) -> DirectView {
        let (rps, tps) = self.rates();
        let now_ms = self.ms();
        let unix = |ms: u64| self.frame.started_at + ms.div_ceil(1000);
        let left = self.total.saturating_sub(self.done);
        DirectView {
            done: self.done,
            total: self.total,
            in_flight: in_flight as u64,
            window: u64::from(self.pace.window()),
            requests_per_s: rps,
            tokens_per_s: tps,
            eta_secs: (rps > 0.0).then(|| (left as f64 / rps).ceil() as u64),
            errors: self.errors.clone(),
            paused_until: self.pace.paused_until(now_ms).map(unix),
            endpoints: self
                .endpoints
                .list
                .iter()
                .enumerate()
                .map(|(i, e)| EndpointView {
                    url: self.client.shown(i).to_string(),
                    outstanding: u64::from(e.outstanding),
                    sent: e.sent,
                    left_out_until: (e.cool_until_ms > now_ms).then(|| unix(e.cool_until_ms)),
                    last_error: self.last_errors[i].clone(),
                })
                .collect(),
        }
    }

    /// Since when no endpoint has answered (Unix seconds).
    pub(super) fn outage_since(&self) -> Option<u64> {
        self.outage_since_ms
            .map(|ms| self.frame.started_at + ms / 1000)
    }

    pub(super) fn snapshot(
        &mut self,
        state: RunState,
        in_flight: usize,
        message: Option<String>,
    ) -> Snapshot {
        // Direct mode pays standard prices: there is no batch receipt;
        // the spend is at standard prices.
        let f = &self.frame;
        let snap = crate::apply::snapshot_of(
            f.job(),
            f.plan,
            &self.tally,
            state,
            f.started_at,
            self.spent(),
        );
        Snapshot {
            message,
            outage_since: self.outage_since(),
            deadline: self.frame.deadline,
            direct: Some(self.view(in_flight)),
            ..snap
        }
    }

    pub(super) fn write_status(&mut self, state: RunState, in_flight: usize) {
        // A request out for long: say what the run is waiting for.
        let waiting = crate::provider::watch::waiting_line(
            self.client.watch().oldest().as_ref(),
            Duration::from_secs(3),
        );
        let snap = self.snapshot(state, in_flight, waiting);
        self.frame.show(&snap);
    }

    /// A plain progress line (CI, pipes).
    pub(super) fn progress_line(&mut self, in_flight: usize) {
        let view = self.view(in_flight);
        let mut lines = status::direct_lines(&view, state::now_secs());
        // Which replica the run waits on, and for how long, as on a terminal.
        lines.extend(crate::provider::watch::waiting_line(
            self.client.watch().oldest().as_ref(),
            Duration::from_secs(3),
        ));
        self.event(&lines.join("; "));
    }

    /// The usage recorded since the last ledger line, as one more line
    /// (one per run and part, so `costs` sees direct runs as they go).
    pub(super) fn write_ledger(&mut self) -> Result<()> {
        let new = self.run.less(self.ledger_written);
        if new.is_zero() {
            return Ok(());
        }
        self.ledger_seq += 1;
        let id = format!("{}-{}", self.run_id, self.ledger_seq);
        self.record_usage(&id, new)?;
        self.ledger_written = self.run;
        Ok(())
    }

    /// One ledger line of `t` at the plan's prices (standard prices: direct
    /// mode has no batch discount).
    pub(super) fn record_usage(&self, id: &str, t: Tokens) -> Result<()> {
        let cost = self.cost(t);
        self.frame.record_usage(&LedgerEntry {
            input_tokens: t.input,
            output_tokens: t.output,
            cache_write_tokens: t.cache_write,
            cache_read_tokens: t.cache_read,
            reasoning_tokens: t.reasoning,
            cache_saved_usd: self.frame.cache_saved(t.cache_write, t.cache_read),
            cost_usd: cost,
            standard_cost_usd: cost,
            ..self.frame.ledger_entry(id)
        })
    }

    /// The usage a killed run made durable and never put in the ledger
    /// (`ledger::shortfall`), as one line.
    pub(super) fn recover_ledger(&mut self) -> Result<()> {
        let path = self.frame.layout().ledger();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(Error::io("read", &path, e)),
        };
        let t = ledger::shortfall(&text, self.frame.job(), self.held);
        if t.is_zero() {
            return Ok(());
        }
        self.record_usage(&format!("{}-recovered", self.run_id), t)?;
        let cache = if t.cache_write + t.cache_read > 0 {
            format!(
                " (and {} cache-write, {} cache-read)",
                t.cache_write, t.cache_read
            )
        } else {
            String::new()
        };
        self.event(&format!(
            "the ledger was missing {} input and {} output tokens{cache} of answers an interrupted run recorded; added",
            t.input, t.output
        ));
        Ok(())
    }

    /// The direct lane's closing words; the frame does the rest.
    pub(super) fn finish(&mut self, ending: Ending) -> Result<(Ending, Summary)> {
        let secs = self.frame.started.elapsed().as_secs_f64();
        let message = match &ending {
            Ending::Finished if self.done > 0 => Some(format!(
                "direct mode: {} requests answered in {:.1} s ({:.0}/s), cost at standard prices",
                crate::ui::num(self.done),
                secs,
                self.done as f64 / secs.max(0.001)
            )),
            Ending::Finished => None,
            Ending::Interrupted => Some(format!(
                "interrupted: every recorded answer is kept; run `batchgrader resume {}` to send the rest",
                self.frame.job()
            )),
            Ending::Halted(r) => Some(format!("halted: {r}")),
            Ending::Detached | Ending::Deadline => None,
        };
        let view = self.view(0);
        let spent = self.spent();
        let outage_since = self.outage_since();
        let tally = &self.tally;
        let f = &self.frame;
        f.finish(ending, message, |state, message, output| Snapshot {
            output_path: output,
            message,
            outage_since,
            direct: Some(view.clone()),
            deadline: f.deadline,
            ..crate::apply::snapshot_of(f.job(), f.plan, tally, state, f.started_at, spent)
        })
    }
}
