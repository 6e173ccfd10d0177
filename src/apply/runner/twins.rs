//! Twins: batches a create of this job made that the job never recorded.
//! A gateway (LiteLLM) that meets a 500 from a backend that had made the
//! batch retries the create on its own and answers with the second: the
//! backend runs both, and bills both. Every create carries the job's
//! metadata (`provider::openai::metadata`), so the provider's batch list
//! (`GET /v1/batches`, `limit`/`after` pages) shows them; `decide::twin`
//! judges each one. A twin is cancelled while it runs, its usage goes into
//! the ledger once it ends (kind `twin`: paid for, not part of the plan),
//! and the summary names it. Its results are never fetched, so no row is
//! merged twice. Message Batches carry no metadata: `list_own` answers
//! `None` there, and nothing is looked for.

use std::collections::BTreeMap;

use super::*;
use crate::apply::decide::{ListedBatch, Twin, UnitIdent};

/// What the run knows of one twin.
#[derive(Debug, Clone, Default)]
pub(super) struct TwinSeen {
    pub chunk: u32,
    pub cancel_asked: bool,
    /// Its usage is in the ledger.
    pub recorded: bool,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
}

impl<'a, B: BatchBackend> Runner<'a, B> {
    /// Between steps: look for twins of the creates made since the last
    /// look, once none of them waits to be adopted, at most once a poll
    /// interval. A twin is made by its create, so only batches listed since
    /// those creates' intents are read (newest first, a page or so), not
    /// the job's whole history each time.
    pub(super) async fn look_for_twins(&mut self, units: &[UnitRecord]) -> Result<()> {
        let settled = units.iter().all(|u| u.phase != Phase::Creating);
        let due = self
            .twins_looked
            .is_none_or(|(_, at)| at.elapsed() >= self.frame.spec.run.poll_interval);
        let last = self.twins_looked.map_or(0, |(secs, _)| secs);
        let Some(since) = units
            .iter()
            .filter_map(|u| u.intent_at)
            .filter(|t| *t >= last)
            .min()
        else {
            return Ok(());
        };
        if !settled || !due {
            return Ok(());
        }
        self.twins_looked = Some((state::now_secs(), Instant::now()));
        self.sweep_twins(units, since).await
    }

    /// Before the output is written: look once more, and wait (within
    /// `retry.give_up_after`, polling) for the twins asked to cancel to end,
    /// so that their usage is in the ledger; one still not ended is left to
    /// the next run, which records it.
    pub(super) async fn settle_twins(&mut self, units: &[UnitRecord]) -> Result<()> {
        let Some(since) = units.iter().filter_map(|u| u.intent_at).min() else {
            return Ok(());
        };
        self.sweep_twins(units, since).await?;
        let deadline = Instant::now() + self.frame.spec.run.give_up_after;
        let pause = self.frame.spec.run.poll_interval;
        while self.twins.values().any(|t| !t.recorded)
            && Instant::now() + pause < deadline
            && !self.interrupted()
        {
            self.sleep_until(Instant::now() + pause).await;
            self.sweep_twins(units, since).await?;
        }
        Ok(())
    }

    /// List this plan's batches made since `since` (Unix seconds), and act
    /// on each twin among them.
    async fn sweep_twins(&mut self, units: &[UnitRecord], since: u64) -> Result<()> {
        let plan = self.frame.plan.plan_hash[..16].to_string();
        let listed = match self.backend.list_own(self.job(), &plan, since).await {
            Ok(Some(listed)) => listed,
            Ok(None) => return Ok(()),
            // Harmless to the job's own batches; the next look tries again.
            Err(e) => {
                self.event(
                    None,
                    &format!("could not list batches to look for twins ({e}); looking again later"),
                );
                return Ok(());
            }
        };
        let ledger = ledger_batch_ids(&self.layout().ledger(), self.job());
        let idents: Vec<UnitIdent> = units
            .iter()
            .map(|u| UnitIdent {
                chunk: u.id,
                attempt: u.attempt,
                creates: u.creates,
                phase: u.phase,
                batch_id: u.batch_id.as_deref(),
            })
            .collect();
        let mut found = Vec::new();
        for o in &listed {
            let (running, billed) = match &o.batch.state {
                RemoteState::Running { .. } => (true, false),
                RemoteState::Requeue { .. } => (false, false),
                RemoteState::Ended { end, usage, .. } => (
                    false,
                    !matches!(end, state::EndKind::Failed { .. })
                        || usage.is_some_and(|u| u.input_tokens + u.output_tokens > 0),
                ),
            };
            let l = ListedBatch {
                id: &o.batch.id,
                chunk: o.chunk,
                attempt: o.attempt,
                submit: o.submit,
                running,
                billed,
            };
            let known = self.twins.contains_key(&o.batch.id);
            match decide::twin(&l, &idents, &ledger) {
                Twin::Found => found.push(o.clone()),
                // Recorded as a twin by this run: its state still counts.
                Twin::Recorded if known => found.push(o.clone()),
                _ => {}
            }
        }
        for o in found {
            self.act_on_twin(o).await?;
        }
        Ok(())
    }

    async fn act_on_twin(&mut self, o: crate::provider::OwnBatch) -> Result<()> {
        let id = o.batch.id.clone();
        if !self.twins.contains_key(&id) {
            let msg = format!(
                "found batch {id}, a second batch of chunk {} (attempt {}, submit {}) that this job never made itself: a create was made twice behind its back (a gateway or proxy that retried it); it is cancelled if it still runs, and its usage is recorded as twin spend",
                o.chunk, o.attempt, o.submit
            );
            self.event(Some(o.chunk), &msg);
            self.frame.ui.warn(&msg);
            self.twins.insert(
                id.clone(),
                TwinSeen {
                    chunk: o.chunk,
                    ..TwinSeen::default()
                },
            );
        }
        let seen = self.twins.get(&id).cloned().unwrap_or_default();
        match o.batch.state {
            RemoteState::Running { .. } if !seen.cancel_asked => {
                match self.backend.cancel(&id).await {
                    Ok(()) => {
                        self.event(Some(o.chunk), &format!("asked to cancel twin batch {id}"));
                        if let Some(t) = self.twins.get_mut(&id) {
                            t.cancel_asked = true;
                        }
                    }
                    Err(e) => self.event(
                        Some(o.chunk),
                        &format!("could not cancel twin batch {id} ({e}); trying again later"),
                    ),
                }
            }
            RemoteState::Ended { usage, .. } if !seen.recorded => {
                let usage = usage.unwrap_or_default();
                let (i, out) = (usage.input_tokens, usage.output_tokens);
                let (cost, standard) = match self.frame.plan.price.as_ref() {
                    Some(p) => (
                        cost::actual_cached(p, i, out, 0, 0),
                        cost::standard_cached(p, i, out, 0, 0),
                    ),
                    None => (0.0, 0.0),
                };
                self.frame.record_usage(&LedgerEntry {
                    input_tokens: i,
                    output_tokens: out,
                    cost_usd: cost,
                    standard_cost_usd: standard,
                    kind: Some("twin"),
                    ..self.frame.ledger_entry(&id)
                })?;
                self.event(
                    Some(o.chunk),
                    &format!(
                        "twin batch {id} ended; its usage ({i} input, {out} output tokens) is in the ledger as twin spend"
                    ),
                );
                if let Some(t) = self.twins.get_mut(&id) {
                    t.recorded = true;
                    t.input_tokens = i;
                    t.output_tokens = out;
                    t.cost_usd = cost;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The summary's words on the twins this run found, if any.
    pub(super) fn twins_line(&self) -> Option<String> {
        if self.twins.is_empty() {
            return None;
        }
        let n = self.twins.len();
        let cancelled = self.twins.values().filter(|t| t.cancel_asked).count();
        let open: Vec<&str> = self
            .twins
            .iter()
            .filter(|(_, t)| !t.recorded)
            .map(|(id, _)| id.as_str())
            .collect();
        let (i, o, cost) = self.twins.values().fold((0, 0, 0.0), |(i, o, c), t| {
            (i + t.input_tokens, o + t.output_tokens, c + t.cost_usd)
        });
        let ids: Vec<String> = self
            .twins
            .iter()
            .map(|(id, t)| format!("{id} (chunk {})", t.chunk))
            .collect();
        Some(format!(
            "{n} twin batch{} found, made behind the job's back by a create retried on the way (a gateway or proxy): {}; {cancelled} cancelled; twin spend {i} input and {o} output tokens (${cost:.4}), in the ledger apart from the job's batches{}; no result of a twin was merged",
            if n == 1 { "" } else { "es" },
            ids.join(", "),
            if open.is_empty() {
                String::new()
            } else {
                format!(
                    "; not ended yet: {} (the next run records its usage)",
                    open.join(", ")
                )
            }
        ))
    }
}

/// The batch ids of `job`'s ledger lines (a ledger that cannot be read
/// holds none: a twin is then judged by the units alone).
fn ledger_batch_ids(ledger: &Path, job: &str) -> HashSet<String> {
    let Ok(text) = std::fs::read_to_string(ledger) else {
        return HashSet::new();
    };
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["job"].as_str() == Some(job))
        .filter_map(|v| v["batch_id"].as_str().map(str::to_string))
        .collect()
}

/// The twins a run found, by batch id.
pub(super) type Twins = BTreeMap<String, TwinSeen>;
