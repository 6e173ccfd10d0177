//! Direct mode (`provider.mode: direct`): the plan's requests sent one by
//! one to `POST {base}/chat/completions` (or Anthropic's `POST
//! {base}/v1/messages`: `provider::direct::Protocol`), many at a time, each
//! answer recorded durably as it arrives.
//!
//! The same plan, outcome log, halt policy and output writer as batch mode;
//! what differs is the shell:
//!
//! ```text
//! plan chunk files ─source→ pace (window, RPM/TPM, server limits) ─endpoints→ send
//!     ─answer→ verdict (retry classifier) ─record→ group commit (fsync) ─durable→ counts
//! ```
//!
//! - `source` streams the requests without an outcome (or with a retryable
//!   failure and attempts left) from the plan, in plan order;
//! - `pace` and `endpoints` decide when and where (pure, table-tested);
//! - `verdict` decides what an answer means (pure, table-tested);
//! - `commit` appends outcomes to the log and fsyncs in groups; an answer
//!   counts only once durable, so after a SIGKILL `resume` sends again only
//!   the requests that were sent and not yet durable: at most
//!   [`UNRECORDED_FACTOR`] × `max_requests_in_flight`.
//!
//! Within a run, a request that failed transiently is sent again up to the
//! retry classifier's budget; one still failing is recorded as a retryable
//! failure, and a further pass sends those again while `retry.max_attempts`
//! allows, as batch mode's retry chunks do.

mod answered;
mod commit;
pub mod endpoints;
pub mod hedge;
mod ledger;
pub mod pace;
mod race;
mod show;
mod source;
pub mod verdict;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::task::{AbortHandle, JoinSet};

use super::decide::{self, NEVER_RAN_FACTOR, RequestState, Tally};
use super::frame::{CANCELLED, failed_state};
use super::{Ending, RunFrame, Summary};
use crate::cost;
use crate::error::{Error, Result};
use crate::provider::direct::{DirectClient, RateHeaders, Sent};
use crate::provider::retry::{Reason, RetryHeaders, RetryPolicy, TransportFailure};
use crate::provider::{ErrorKind, LineOutcome, ProviderError};
use crate::state::journal::LedgerEntry;
use crate::state::{self, FailureRecord, Outcome, ResultRecord};
use crate::status::{self, DirectView, EndpointView, RunState, Snapshot};
use commit::Committer;
use endpoints::{Endpoints, Failed};
use hedge::Latencies;
use ledger::Tokens;
use pace::{Pace, PaceConfig};
use source::{Req, Source};
use verdict::{Got, Verdict};

/// Requests sent and not yet durably recorded are at most this many times
/// `max_requests_in_flight`: those on the wire, plus answers waiting for
/// the next group commit (one flush takes milliseconds).
pub const UNRECORDED_FACTOR: u64 = 4;
/// How often `status.json` (and the live view) is rewritten.
const STATUS_EVERY: Duration = Duration::from_secs(1);
/// How often a plain progress line is written when stderr is no terminal.
const LINE_EVERY: Duration = Duration::from_secs(5);
/// How often the run's usage so far goes into the cost ledger.
const LEDGER_EVERY: Duration = Duration::from_secs(30);

/// What one spawned attempt returns.
struct Done {
    req: Req,
    endpoint: usize,
    result: Attempted,
}

// Moved once per attempt; boxing the answer would cost an allocation each.
#[allow(clippy::large_enum_variant)]
enum Attempted {
    Transport {
        failure: TransportFailure,
        detail: String,
    },
    Answer {
        status: u16,
        request_id: Option<String>,
        retry: RetryHeaders,
        limits: RateHeaders,
        body: String,
        line: LineOutcome,
        /// The body's bytes, counted against the client's budget until
        /// the answer is handled.
        _held: crate::provider::bounded::Held,
    },
}

/// A request on the wire: where, since when, and its copy on another
/// replica once it has been out too long there (`hedge`).
struct Out {
    req: Req,
    endpoint: usize,
    started_ms: u64,
    task: AbortHandle,
    copy: Option<Copy>,
}

/// The first task of each copy's request (`Out`'s key).
type CopyOf = HashMap<tokio::task::Id, tokio::task::Id>;

/// The copy of a request sent to a second replica.
struct Copy {
    endpoint: usize,
    started_ms: u64,
    task: AbortHandle,
}

/// What one recorded outcome moves, once durable.
struct Shift {
    before: RequestState,
    after: RequestState,
    tokens: Tokens,
}

/// How a pass ended.
enum PassEnd {
    Done,
    Interrupted,
    Halted(String),
}

/// One direct-mode run: the frame every run shares, the client, and the
/// loop's own state.
pub struct DirectRunner<'a> {
    frame: RunFrame<'a>,
    client: Arc<DirectClient>,
    run_id: String,
    policy: RetryPolicy,
    tally: Tally,
    /// Spend of earlier runs (standard prices), from the outcome log.
    spent_before: f64,
    /// Tokens of the answers durable in this run.
    run: Tokens,
    done: u64,
    total: u64,
    errors: BTreeMap<String, u64>,
    pace: Pace,
    endpoints: Endpoints,
    /// Each endpoint's recent answer times, for when to hedge.
    latencies: Latencies,
    /// Replicas a request was hedged from (said once each).
    hedged_from: Vec<bool>,
    last_errors: Vec<Option<String>>,
    /// Since when no endpoint has answered (ms since start).
    outage_since_ms: Option<u64>,
    /// Rate samples: (when, done, tokens).
    samples: VecDeque<(Instant, u64, u64)>,
    ledger_written: Tokens,
    ledger_seq: u32,
    /// The tokens of the answers the state held for the plan at the last scan.
    held: Tokens,
    /// Failures recorded in the current pass.
    pass_failures: u64,
    /// `--retry-failed`, `--retry-parse-failures`.
    retry: decide::RetryAsked,
    /// A rehearsal (`apply --sample`): only these plan positions are sent.
    only: Option<std::collections::HashSet<u64>>,
    /// Direct mode pays standard prices, whatever lane the plan priced
    /// (a batch job's rehearsal runs here at the plan's batch prices
    /// otherwise).
    price: Option<cost::Price>,
    /// A batch job's lane switch (a rehearsal, the deadline's fallback):
    /// the job's spend before this run is the ledger's (batch lines at
    /// batch prices), not its answers' tokens at standard prices.
    ledger_base: Option<f64>,
    /// The deadline's fallback, refused by the budget: end at once,
    /// writing the output with what the batches answered.
    refused: Option<String>,
}

impl<'a> DirectRunner<'a> {
    pub fn new(frame: RunFrame<'a>, client: Arc<DirectClient>) -> Self {
        let run = &frame.spec.run;
        let endpoints = client.endpoints();
        let pace = Pace::new(
            PaceConfig {
                max_in_flight: run.max_requests_in_flight.max(1),
                requests_per_minute: run.requests_per_minute,
                tokens_per_minute: run.tokens_per_minute,
            },
            0,
        );
        let price = frame
            .plan
            .price
            .clone()
            .map(cost::Price::at_standard_prices);
        DirectRunner {
            run_id: format!("direct-{}-{}", frame.started_at, std::process::id()),
            frame,
            client,
            policy: RetryPolicy::default(),
            tally: Tally::default(),
            spent_before: 0.0,
            run: Tokens::default(),
            done: 0,
            total: 0,
            errors: BTreeMap::new(),
            pace,
            endpoints: Endpoints::new(endpoints),
            latencies: Latencies::new(endpoints),
            hedged_from: vec![false; endpoints],
            last_errors: vec![None; endpoints],
            outage_since_ms: None,
            samples: VecDeque::new(),
            ledger_written: Tokens::default(),
            ledger_seq: 0,
            held: Tokens::default(),
            pass_failures: 0,
            retry: decide::RetryAsked::default(),
            only: None,
            price,
            ledger_base: None,
            refused: None,
        }
    }

    /// The deadline's fallback of a batch job: the rows its batches did not
    /// answer (every request without a final outcome), unless `refused`.
    pub fn after_batches(mut self, refused: Option<String>) -> Self {
        self.refused = refused;
        self
    }

    /// Send only the requests at these plan positions (a rehearsal).
    pub fn only(mut self, seqs: std::collections::HashSet<u64>) -> Self {
        self.only = Some(seqs);
        self
    }

    /// Send again the rows with a final outcome that `asked` names.
    pub fn retrying(mut self, asked: decide::RetryAsked) -> Self {
        self.retry = asked;
        self
    }

    fn ms(&self) -> u64 {
        self.frame.started.elapsed().as_millis() as u64
    }

    fn max_attempts(&self) -> u32 {
        self.frame.spec.run.max_attempts
    }

    fn cost(&self, t: Tokens) -> f64 {
        // Standard prices, cache writes and reads included.
        self.price.as_ref().map_or(0.0, |p| {
            cost::actual_cached(p, t.input, t.output, t.cache_write, t.cache_read)
        })
    }

    fn spent(&self) -> f64 {
        self.ledger_base.unwrap_or(self.spent_before) + self.cost(self.run)
    }

    fn event(&self, msg: &str) {
        self.frame.event(None, msg);
    }

    /// Where every outstanding request stands: the tally, the spend so far,
    /// and which to send in the next pass (by position, with their state).
    fn scan(&mut self) -> Result<HashMap<u64, RequestState>> {
        let max = self.max_attempts();
        let mut tally = Tally::default();
        let mut held = Tokens::default();
        let mut send = HashMap::new();
        for r in self.frame.store.requests(self.frame.plan.generation) {
            let r = r?;
            let Some(seq) = r.seq else { continue };
            let outcome = self.frame.store.outcome(&r.fingerprint)?;
            if let Some(Outcome::Success(res)) = &outcome {
                held.add(Tokens {
                    input: res.input_tokens,
                    output: res.output_tokens,
                    cache_write: res.cache_write_tokens,
                    cache_read: res.cache_read_tokens,
                    reasoning: res.reasoning_tokens,
                });
            }
            let state = self.frame.request_state(outcome);
            tally.add(state, max);
            let wanted = self.only.as_ref().is_none_or(|o| o.contains(&seq));
            if wanted && (state == RequestState::Pending || decide::should_retry(state, max)) {
                send.insert(seq, state);
            }
        }
        self.tally = tally;
        self.held = held;
        self.spent_before = self.cost(held);
        self.run = Tokens::default();
        Ok(send)
    }

    /// Run the job until every request has a final outcome, or it is
    /// interrupted or halted.
    pub async fn run(&mut self) -> Result<(Ending, Summary)> {
        self.frame.begin();
        // Direct mode has nothing out between runs: every request is free.
        self.frame.grant_retries(self.retry, &|_| false)?;
        let mut to_send = self.scan()?;
        self.recover_ledger()?;
        if self.frame.spec.endpoint.mode != crate::spec::ProviderMode::Direct {
            let ledger = std::fs::read_to_string(self.frame.layout().ledger()).unwrap_or_default();
            self.ledger_base = Some(crate::costs::job_spend(&ledger, self.frame.job()));
        }
        if let Some(reason) = self.refused.take() {
            return self.finish(Ending::Halted(reason));
        }
        let untouched = self.tally.settled() == 0;
        // The budget before the start is the whole job's bound; a
        // rehearsal sends a sample, and the run's own check (`decide::halt`
        // on what was spent) still holds it to the budget.
        if !self.frame.is_rehearsal()
            && let Some(reason) = self.frame.refuse_start(untouched)
        {
            return self.finish(Ending::Halted(reason));
        }
        if self.frame.cancelled()? {
            return self.finish(Ending::Halted(CANCELLED.into()));
        }
        let urls: Vec<&str> = (0..self.client.endpoints())
            .map(|i| self.client.shown(i))
            .collect();
        self.event(&format!(
            "direct mode: {} request{} to send to {}, up to {} in flight",
            to_send.len(),
            if to_send.len() == 1 { "" } else { "s" },
            urls.join(", "),
            self.frame.spec.run.max_requests_in_flight
        ));
        let mut committer = Committer::start(self.frame.store.outcome_appender()?);
        let mut pass = 0u32;
        let ending = loop {
            if to_send.is_empty() {
                break Ending::Finished;
            }
            pass += 1;
            if pass > self.max_attempts().saturating_mul(NEVER_RAN_FACTOR) {
                break Ending::Finished;
            }
            if pass > 1 {
                self.event(&format!(
                    "sending {} failed request{} again (pass {pass})",
                    to_send.len(),
                    if to_send.len() == 1 { "" } else { "s" }
                ));
            }
            self.total = self.done + to_send.len() as u64;
            self.pass_failures = 0;
            let end = self.pass(&mut committer, to_send).await;
            let end = match end {
                Ok(e) => e,
                Err(e) => {
                    let _ = committer.finish();
                    // The run's error is the one to show; usage a failed
                    // ledger line misses is put in by the next run.
                    let _ = self.write_ledger();
                    return Err(e);
                }
            };
            match end {
                PassEnd::Done => {}
                PassEnd::Interrupted => break Ending::Interrupted,
                PassEnd::Halted(r) => break Ending::Halted(r),
            }
            // Every request of the pass succeeded: nothing is left to send
            // (a rescan would read every outcome back).
            if self.pass_failures == 0 {
                to_send = HashMap::new();
                continue;
            }
            // Every answer of the pass is durable: count again from the log.
            let (done, total) = (self.done, self.total);
            let run = self.run;
            let spent = self.spent();
            to_send = self.scan()?;
            self.spent_before = spent - self.cost(run);
            self.run = run;
            self.done = done;
            self.total = total;
        };
        committer.finish()?;
        self.write_ledger()?;
        self.finish(ending)
    }

    /// Send the requests `to_send` names, until each has a recorded outcome.
    async fn pass(
        &mut self,
        committer: &mut Committer,
        to_send: HashMap<u64, RequestState>,
    ) -> Result<PassEnd> {
        let files: Vec<PathBuf> = self
            .frame
            .plan
            .chunks
            .iter()
            .map(|c| self.frame.store.layout().resolve(&c.file))
            .collect();
        let wanted = move |seq: u64, _: &state::RequestRecord| to_send.get(&seq).copied();
        let cap = output_cap(self.frame.spec.request());
        // Held apart from `self`, which the loop changes as answers come.
        let client = self.client.clone();
        let mut source = Source::new(
            files,
            self.frame.store.requests(self.frame.plan.generation),
            &wanted,
            cap,
            client.protocol(),
        );
        let max_in_flight = u64::from(self.frame.spec.run.max_requests_in_flight.max(1));
        let unrecorded_cap = max_in_flight * UNRECORDED_FACTOR;
        let mut flying: JoinSet<Done> = JoinSet::new();
        // The requests on the wire by their first task (two rows may send
        // the same request), and the tasks of the copies that lost a race
        // (their endpoint), to be reaped.
        let mut out: HashMap<tokio::task::Id, Out> = HashMap::new();
        let mut losers: HashMap<tokio::task::Id, usize> = HashMap::new();
        let mut copy_of = CopyOf::new();
        let mut again: VecDeque<Req> = VecDeque::new();
        let mut shifts: VecDeque<Shift> = VecDeque::new();
        let mut applied = committer.durable();
        let mut exhausted = false;
        let mut halting: Option<String> = None;
        let mut next_status = Instant::now();
        let mut next_line = Instant::now() + LINE_EVERY;
        let mut next_ledger = Instant::now() + LEDGER_EVERY;
        let typical_tokens = self.typical_tokens();
        loop {
            // 1. What became durable counts now.
            let durable = committer.durable();
            while applied < durable {
                let Some(s) = shifts.pop_front() else { break };
                self.tally.shift(s.before, s.after, self.max_attempts());
                self.run.add(s.tokens);
                self.done += 1;
                applied += 1;
            }
            if let Some(e) = committer.error() {
                return Err(e.into());
            }
            if self.frame.interrupted() {
                flying.abort_all();
                return Ok(PassEnd::Interrupted);
            }
            if halting.is_none()
                && let Some(reason) = decide::halt(
                    &self.frame.policy(),
                    &self.tally,
                    self.spent(),
                    &[],
                    &self.frame.quality(self.tally.settled())?,
                )
            {
                self.event(&format!(
                    "halting: {reason}; waiting for the {} request{} in flight",
                    flying.len(),
                    if flying.len() == 1 { "" } else { "s" }
                ));
                halting = Some(reason);
            }
            // 2. Start what may start.
            let now = self.ms();
            let mut wake: Option<u64> = None;
            let unrecorded = |flying: &JoinSet<Done>| {
                flying.len() as u64 + committer.handed() - committer.durable()
            };
            while halting.is_none()
                && (flying.len() as u32) < self.pace.window()
                && unrecorded(&flying) < unrecorded_cap
            {
                let req = match again.front() {
                    Some(r) if r.not_before_ms <= now => again.pop_front(),
                    _ if !exhausted => match source.next_req()? {
                        Some(r) => Some(r),
                        None => {
                            exhausted = true;
                            None
                        }
                    },
                    _ => None,
                };
                let Some(req) = req else {
                    if let Some(r) = again.front() {
                        wake = min_some(wake, r.not_before_ms);
                    }
                    break;
                };
                let endpoint = match self.endpoints.pick(now) {
                    Ok(i) => i,
                    Err(at) => {
                        again.push_front(req);
                        if let Some(at) = at {
                            wake = min_some(wake, at);
                        }
                        break;
                    }
                };
                if let Err(at) = self.pace.start(now, req.rate_tokens) {
                    again.push_front(req);
                    wake = min_some(wake, at);
                    break;
                }
                self.endpoints.started(endpoint);
                let task = spawn_attempt(&mut flying, &self.client, req.clone(), endpoint);
                out.insert(
                    task.id(),
                    Out {
                        req,
                        endpoint,
                        started_ms: now,
                        task,
                        copy: None,
                    },
                );
            }
            // A request out far longer than its replica's recent answers
            // goes to another replica as well (`hedge`).
            if halting.is_none() {
                let room = unrecorded(&flying) < unrecorded_cap;
                self.hedge(&mut flying, &mut out, &mut copy_of, now, room);
            }
            // 3. The end of the pass: nothing left to send or wait for.
            let idle = flying.is_empty() && (halting.is_some() || (exhausted && again.is_empty()));
            if idle {
                while committer.durable() < committer.handed() {
                    if let Some(e) = committer.error() {
                        return Err(e.into());
                    }
                    let flushed = committer.flushed.clone();
                    let _ =
                        tokio::time::timeout(Duration::from_millis(50), flushed.notified()).await;
                }
                // Count the last ones.
                let durable = committer.durable();
                while applied < durable {
                    let Some(s) = shifts.pop_front() else { break };
                    self.tally.shift(s.before, s.after, self.max_attempts());
                    self.run.add(s.tokens);
                    self.done += 1;
                    applied += 1;
                }
                self.write_status(RunState::Running, flying.len());
                return Ok(match halting {
                    Some(r) => PassEnd::Halted(r),
                    None => PassEnd::Done,
                });
            }
            // All endpoints down for longer than retry.give_up_after: stop;
            // `resume` goes on later.
            if let Some(since) = self.outage_since_ms
                && now.saturating_sub(since) > self.frame.spec.run.give_up_after.as_millis() as u64
            {
                flying.abort_all();
                return Err(Error::runtime_with_hint(
                    format!(
                        "no endpoint has answered for {} (retry.give_up_after); last errors: {}",
                        status::short_duration(now.saturating_sub(since) / 1000),
                        self.last_error_text()
                    ),
                    format!(
                        "check that the servers are up, then run `batchgrader resume {}` (recorded answers are kept)",
                        self.frame.job()
                    ),
                ));
            }
            // 4. Wait for an answer, a flush, or the next thing due.
            let status_due = Instant::now() >= next_status;
            if status_due {
                next_status = Instant::now() + STATUS_EVERY;
                self.write_status(RunState::Running, flying.len());
                if !self.frame.ui.tty && Instant::now() >= next_line {
                    next_line = Instant::now() + LINE_EVERY;
                    self.progress_line(flying.len());
                }
                if Instant::now() >= next_ledger {
                    next_ledger = Instant::now() + LEDGER_EVERY;
                    self.write_ledger()?;
                }
            }
            let until_status = next_status.saturating_duration_since(Instant::now());
            let sleep = match wake {
                Some(at) => Duration::from_millis(at.saturating_sub(now)).min(until_status),
                None => until_status,
            }
            .min(Duration::from_millis(250));
            let flushed = committer.flushed.clone();
            let joined = tokio::select! {
                biased;
                j = flying.join_next_with_id(), if !flying.is_empty() => j,
                () = flushed.notified(), if !shifts.is_empty() => None,
                () = tokio::time::sleep(sleep) => None,
            };
            let mut ready: Vec<Done> = Vec::new();
            if let Some(j) = joined {
                let mut j = Some(j);
                while let Some(result) = j.take().or_else(|| flying.try_join_next_with_id()) {
                    // A copy that lost its race is dropped, answer and all:
                    // the winner alone is recorded.
                    let id = match &result {
                        Ok((id, _)) => *id,
                        Err(e) => e.id(),
                    };
                    if let Some(endpoint) = losers.remove(&id) {
                        self.endpoints.finished(endpoint);
                        continue;
                    }
                    let (_, d) = result.map_err(|e| {
                        Error::runtime_with_hint(
                            format!("a request task failed: {e}"),
                            format!("run `batchgrader resume {}`", self.frame.job()),
                        )
                    })?;
                    self.settle_race(&d, id, &mut out, &mut copy_of, &mut losers);
                    ready.push(d);
                }
            }
            for d in ready {
                if let Some(r) = self.handle(d, committer, &mut shifts, typical_tokens)? {
                    // Keep the queue ordered by when each may go again.
                    let at = again
                        .iter()
                        .position(|q| q.not_before_ms > r.not_before_ms)
                        .unwrap_or(again.len());
                    again.insert(at, r);
                }
            }
        }
    }

    /// The tokens of a typical request, for the server's token headers.
    fn typical_tokens(&self) -> u64 {
        let p = self.frame.plan;
        p.prompt_tokens.checked_div(p.outstanding).unwrap_or(0)
            + output_cap(self.frame.spec.request())
    }
}

/// One attempt of `req` to `endpoint`, as a task of `flying`.
fn spawn_attempt(
    flying: &mut JoinSet<Done>,
    client: &Arc<DirectClient>,
    req: Req,
    endpoint: usize,
) -> AbortHandle {
    let client = client.clone();
    flying.spawn(async move {
        let sent = client.send(endpoint, req.body.clone()).await;
        let result = match sent {
            Sent::Transport { failure, detail } => Attempted::Transport { failure, detail },
            Sent::Answer(a) => {
                // Valid UTF-8 (every JSON answer) becomes text without a
                // copy: the budget counted it once.
                let body = String::from_utf8(a.body)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
                let line = client.protocol().classify(a.status, &body);
                Attempted::Answer {
                    status: a.status,
                    request_id: a.request_id,
                    retry: a.retry,
                    limits: a.limits,
                    body,
                    line,
                    _held: a.held,
                }
            }
        };
        Done {
            req,
            endpoint,
            result,
        }
    })
}

fn min_some(a: Option<u64>, b: u64) -> Option<u64> {
    Some(a.map_or(b, |a| a.min(b)))
}

/// The output cap every request carries (`max_completion_tokens`, else
/// `max_tokens`), for the token rate.
fn output_cap(request: &serde_json::Map<String, serde_json::Value>) -> u64 {
    request
        .get("max_completion_tokens")
        .or_else(|| request.get("max_tokens"))
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0)
}

/// A value in [0, 1) from the clock: jitter needs no more.
fn jitter() -> f64 {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    f64::from(nanos % 1000) / 1000.0
}
