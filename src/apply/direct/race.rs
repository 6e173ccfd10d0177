//! Hedged requests: a request out far longer than its replica's recent
//! answers is sent to another replica as well (`hedge` decides when), the
//! first of the two to finish is the one handled and recorded, and the
//! other is aborted and dropped unread, whatever it would have said.

use super::*;

impl DirectRunner<'_> {
    /// Sends a copy of each request due for one, oldest first, while the
    /// window has room (`room`: the cap on unrecorded requests allows).
    pub(super) fn hedge(
        &mut self,
        flying: &mut JoinSet<Done>,
        out: &mut HashMap<tokio::task::Id, Out>,
        copy_of: &mut CopyOf,
        now: u64,
        room: bool,
    ) {
        if !room || self.client.endpoints() < 2 {
            return;
        }
        // This runs once per turn of the loop (thousands a second at full
        // speed): nothing is due before the floor, so look no further.
        let out_ms = |o: &Out| now.saturating_sub(o.started_ms);
        if !out
            .values()
            .any(|o| o.copy.is_none() && out_ms(o) >= hedge::HEDGE_FLOOR_MS)
        {
            return;
        }
        let after: Vec<Option<u64>> = (0..self.client.endpoints())
            .map(|i| self.latencies.hedge_after(i))
            .collect();
        let mut due: Vec<(u64, tokio::task::Id)> = out
            .iter()
            .filter(|(_, o)| {
                let seen = hedge::Out {
                    out_ms: out_ms(o),
                    after_ms: after[o.endpoint],
                    hedged: o.copy.is_some(),
                };
                let free = self.endpoints.pick_other(now, o.endpoint).is_some();
                hedge::should_hedge(seen, free)
            })
            .map(|(id, o)| (o.started_ms, *id))
            .collect();
        due.sort_unstable();
        for (_, first) in due {
            if (flying.len() as u32) >= self.pace.window() {
                break;
            }
            let Some(o) = out.get_mut(&first) else {
                continue;
            };
            let Some(to) = self.endpoints.pick_other(now, o.endpoint) else {
                continue;
            };
            if self.pace.start(now, o.req.rate_tokens).is_err() {
                break;
            }
            self.endpoints.started(to);
            let task = spawn_attempt(flying, &self.client, o.req.clone(), to);
            copy_of.insert(task.id(), first);
            o.copy = Some(Copy {
                endpoint: to,
                started_ms: now,
                task,
            });
            let from = o.endpoint;
            let waited = now.saturating_sub(o.started_ms);
            *self.errors.entry("slow".to_string()).or_default() += 1;
            // Said once per replica: the live view counts the rest.
            if !self.hedged_from[from] {
                self.hedged_from[from] = true;
                self.event(&format!(
                    "{} has not answered a {} in {}s, {}× its recent answers' 95th percentile \
                     (at least {}s): sent to {} as well, the first answer is kept (a copy may \
                     be billed too)",
                    self.client.shown(from),
                    self.client.protocol().call(),
                    waited / 1000,
                    hedge::HEDGE_FACTOR,
                    hedge::HEDGE_FLOOR_MS / 1000,
                    self.client.shown(to)
                ));
            }
        }
    }

    /// `d` (task `id`) finished first: its twin, if it has one, is aborted
    /// and left to be reaped as a loser. A replica beaten by a copy is
    /// counted as failing, so one that hangs is left out after a few.
    pub(super) fn settle_race(
        &mut self,
        d: &Done,
        id: tokio::task::Id,
        out: &mut HashMap<tokio::task::Id, Out>,
        copy_of: &mut CopyOf,
        losers: &mut HashMap<tokio::task::Id, usize>,
    ) {
        let now = self.ms();
        let first = copy_of.remove(&id).unwrap_or(id);
        let Some(o) = out.remove(&first) else {
            return;
        };
        let started = match &o.copy {
            Some(c) if c.task.id() == id => c.started_ms,
            _ => o.started_ms,
        };
        if let Attempted::Answer { status, .. } = &d.result
            && *status < 500
            && *status != 429
        {
            self.latencies
                .record(d.endpoint, now.saturating_sub(started));
        }
        let Some(copy) = o.copy else { return };
        copy_of.remove(&copy.task.id());
        let copy_won = copy.task.id() == id;
        let (loser, task) = if copy_won {
            (o.endpoint, o.task)
        } else {
            (copy.endpoint, copy.task)
        };
        task.abort();
        losers.insert(task.id(), loser);
        if copy_won {
            self.last_errors[loser] = Some(format!(
                "no answer in {}s while another replica answered",
                now.saturating_sub(o.started_ms) / 1000
            ));
            self.endpoint_failed(loser, now, false);
        }
    }
}
