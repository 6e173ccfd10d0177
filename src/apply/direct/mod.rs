//! Direct mode (`provider.mode: direct`): the plan's requests sent one by
//! one to `POST {base}/chat/completions`, many at a time, each answer
//! recorded durably as it arrives.
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

mod commit;
pub mod endpoints;
mod ledger;
pub mod pace;
mod source;
pub mod verdict;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::task::JoinSet;

use super::decide::{self, NEVER_RAN_FACTOR, RequestState, Tally};
use super::frame::{CANCELLED, failed_state};
use super::{Ending, RunFrame, Summary};
use crate::cost;
use crate::error::{Error, Result};
use crate::provider::direct::{DirectClient, RateHeaders, Sent};
use crate::provider::openai::lines::classify_reply;
use crate::provider::retry::{Reason, RetryHeaders, RetryPolicy, TransportFailure};
use crate::provider::{ErrorKind, LineOutcome, ProviderError};
use crate::state::journal::LedgerEntry;
use crate::state::{self, FailureRecord, Outcome, ResultRecord};
use crate::status::{self, DirectView, EndpointView, RunState, Snapshot};
use commit::Committer;
use endpoints::{Endpoints, Failed};
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
    },
}

/// What one recorded outcome moves, once durable.
struct Shift {
    before: RequestState,
    after: RequestState,
    input_tokens: u64,
    output_tokens: u64,
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
    /// Durable in this run.
    run_input: u64,
    run_output: u64,
    done: u64,
    total: u64,
    errors: BTreeMap<String, u64>,
    pace: Pace,
    endpoints: Endpoints,
    last_errors: Vec<Option<String>>,
    /// Since when no endpoint has answered (ms since start).
    outage_since_ms: Option<u64>,
    /// Rate samples: (when, done, tokens).
    samples: VecDeque<(Instant, u64, u64)>,
    ledger_written: (u64, u64),
    ledger_seq: u32,
    /// The tokens of the answers the state held for the plan at the last scan.
    held: (u64, u64),
    /// Failures recorded in the current pass.
    pass_failures: u64,
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
        DirectRunner {
            run_id: format!("direct-{}-{}", frame.started_at, std::process::id()),
            frame,
            client,
            policy: RetryPolicy::default(),
            tally: Tally::default(),
            spent_before: 0.0,
            run_input: 0,
            run_output: 0,
            done: 0,
            total: 0,
            errors: BTreeMap::new(),
            pace,
            endpoints: Endpoints::new(endpoints),
            last_errors: vec![None; endpoints],
            outage_since_ms: None,
            samples: VecDeque::new(),
            ledger_written: (0, 0),
            ledger_seq: 0,
            held: (0, 0),
            pass_failures: 0,
        }
    }

    fn ms(&self) -> u64 {
        self.frame.started.elapsed().as_millis() as u64
    }

    fn max_attempts(&self) -> u32 {
        self.frame.spec.run.max_attempts
    }

    fn cost(&self, input: u64, output: u64) -> f64 {
        // The plan of a direct job holds standard prices (plan.rs).
        self.frame
            .plan
            .price
            .as_ref()
            .map_or(0.0, |p| cost::actual(p, input, output))
    }

    fn spent(&self) -> f64 {
        self.spent_before + self.cost(self.run_input, self.run_output)
    }

    fn event(&self, msg: &str) {
        self.frame.event(None, msg);
    }

    /// Where every outstanding request stands: the tally, the spend so far,
    /// and which to send in the next pass (by position, with their state).
    fn scan(&mut self) -> Result<HashMap<u64, RequestState>> {
        let max = self.max_attempts();
        let mut tally = Tally::default();
        let (mut input, mut output) = (0u64, 0u64);
        let mut send = HashMap::new();
        for r in self.frame.store.requests(self.frame.plan.generation) {
            let r = r?;
            let Some(seq) = r.seq else { continue };
            let outcome = self.frame.store.outcome(&r.fingerprint)?;
            if let Some(Outcome::Success(res)) = &outcome {
                input += res.input_tokens;
                output += res.output_tokens;
            }
            let state = self.frame.request_state(outcome);
            tally.add(state, max);
            if state == RequestState::Pending || decide::should_retry(state, max) {
                send.insert(seq, state);
            }
        }
        self.tally = tally;
        self.held = (input, output);
        self.spent_before = self.cost(input, output);
        self.run_input = 0;
        self.run_output = 0;
        Ok(send)
    }

    /// Run the job until every request has a final outcome, or it is
    /// interrupted or halted.
    pub async fn run(&mut self) -> Result<(Ending, Summary)> {
        self.frame.begin();
        let mut to_send = self.scan()?;
        self.recover_ledger()?;
        let untouched = self.tally.settled() == 0;
        if let Some(reason) = self.frame.refuse_start(untouched) {
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
            let (input, output) = (self.run_input, self.run_output);
            let spent = self.spent();
            to_send = self.scan()?;
            self.spent_before = spent - self.cost(input, output);
            self.run_input = input;
            self.run_output = output;
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
        let mut source = Source::new(
            files,
            self.frame.store.requests(self.frame.plan.generation),
            &wanted,
            cap,
        );
        let max_in_flight = u64::from(self.frame.spec.run.max_requests_in_flight.max(1));
        let unrecorded_cap = max_in_flight * UNRECORDED_FACTOR;
        let mut flying: JoinSet<Done> = JoinSet::new();
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
                self.run_input += s.input_tokens;
                self.run_output += s.output_tokens;
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
                && let Some(reason) =
                    decide::halt(&self.frame.policy(), &self.tally, self.spent(), &[])
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
                let client = self.client.clone();
                flying.spawn(async move {
                    let sent = client.send(endpoint, req.body.clone()).await;
                    let result = match sent {
                        Sent::Transport { failure, detail } => {
                            Attempted::Transport { failure, detail }
                        }
                        Sent::Answer(a) => {
                            let body = String::from_utf8_lossy(&a.body).into_owned();
                            let line = classify_reply("", a.status, &body);
                            Attempted::Answer {
                                status: a.status,
                                request_id: a.request_id,
                                retry: a.retry,
                                limits: a.limits,
                                body,
                                line,
                            }
                        }
                    };
                    Done {
                        req,
                        endpoint,
                        result,
                    }
                });
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
                    self.run_input += s.input_tokens;
                    self.run_output += s.output_tokens;
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
                    "check that the servers are up, then run `batchgrader resume` (recorded answers are kept)",
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
                j = flying.join_next(), if !flying.is_empty() => j,
                () = flushed.notified(), if !shifts.is_empty() => None,
                () = tokio::time::sleep(sleep) => None,
            };
            let mut ready: Vec<Done> = Vec::new();
            if let Some(j) = joined {
                ready.push(j.map_err(|e| {
                    Error::runtime_with_hint(
                        format!("a request task failed: {e}"),
                        "run `batchgrader resume`",
                    )
                })?);
                while let Some(j) = flying.try_join_next() {
                    ready.push(j.map_err(|e| {
                        Error::runtime_with_hint(
                            format!("a request task failed: {e}"),
                            "run `batchgrader resume`",
                        )
                    })?);
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

    /// One attempt's result: record it, or return the request to send again.
    fn handle(
        &mut self,
        d: Done,
        committer: &mut Committer,
        shifts: &mut VecDeque<Shift>,
        typical_tokens: u64,
    ) -> Result<Option<Req>> {
        let Done {
            mut req,
            endpoint,
            result,
        } = d;
        let now = self.ms();
        self.endpoints.finished(endpoint);
        let got = match &result {
            Attempted::Transport { failure, detail } => Got::Transport {
                failure: *failure,
                detail,
            },
            Attempted::Answer {
                status,
                retry,
                body,
                line,
                ..
            } => Got::Answer {
                status: *status,
                retry,
                body,
                line,
            },
        };
        // The endpoint's health.
        match &result {
            Attempted::Transport { failure, detail } => {
                let refused = *failure == TransportFailure::Connect;
                self.last_errors[endpoint] = Some(detail.clone());
                self.endpoint_failed(endpoint, now, refused);
            }
            Attempted::Answer { status, limits, .. } => {
                if *status >= 500 {
                    self.last_errors[endpoint] = Some(format!("HTTP {status}"));
                    self.endpoint_failed(endpoint, now, false);
                } else {
                    self.endpoints.answered(endpoint);
                    self.outage_since_ms = None;
                }
                if limits.any() {
                    self.pace.on_headers(now, limits, typical_tokens);
                }
                if *status == 429 {
                    let wait = match &result {
                        Attempted::Answer { retry, .. } => {
                            crate::provider::retry::retry_after(retry, SystemTime::now())
                        }
                        Attempted::Transport { .. } => None,
                    };
                    self.pace
                        .on_rate_limited(now, wait.map(|w| w.as_millis() as u64));
                } else {
                    self.pace.on_answer();
                }
            }
        }
        let verdict = verdict::judge(
            got,
            req.tries,
            req.limited,
            &self.policy,
            jitter(),
            SystemTime::now(),
        );
        match verdict {
            Verdict::Again {
                after,
                counts,
                class,
            } => {
                *self.errors.entry(class.to_string()).or_default() += 1;
                if counts {
                    req.tries += 1;
                }
                if class == "rate_limited" {
                    req.limited += 1;
                }
                req.not_before_ms = now + after.as_millis() as u64;
                Ok(Some(req))
            }
            Verdict::Stop(reason) => Err(self.stop_error(&result, &reason).into()),
            Verdict::Fail { code, message } => {
                let class = match &result {
                    Attempted::Transport { .. } => "network",
                    Attempted::Answer { .. } => "bad_response",
                };
                *self.errors.entry(class.to_string()).or_default() += 1;
                let message = self.client.redact(&message);
                self.record_failure(req, code, message, true, committer, shifts);
                Ok(None)
            }
            Verdict::Record => {
                let Attempted::Answer {
                    status,
                    request_id,
                    line,
                    ..
                } = result
                else {
                    unreachable!("only answers are recorded as they are")
                };
                match line {
                    LineOutcome::Success(s) => {
                        let after = RequestState::Succeeded {
                            parsed: self.frame.parser.parse(&s.content).is_ok(),
                        };
                        let (i, o) = (s.usage.prompt_tokens, s.usage.completion_tokens);
                        shifts.push_back(Shift {
                            before: req.before,
                            after,
                            input_tokens: i,
                            output_tokens: o,
                        });
                        committer.push(
                            req.fingerprint,
                            Outcome::Success(ResultRecord {
                                answer: s.content,
                                input_tokens: i,
                                output_tokens: o,
                            }),
                        );
                    }
                    LineOutcome::Failure(f) => {
                        *self
                            .errors
                            .entry(verdict::failure_class(status).to_string())
                            .or_default() += 1;
                        let mut message = self.client.redact(&f.message);
                        if let Some(id) = request_id {
                            message.push_str(&format!(" (request {id})"));
                        }
                        self.record_failure(req, f.code, message, f.retryable, committer, shifts);
                    }
                }
                Ok(None)
            }
        }
    }

    fn record_failure(
        &mut self,
        req: Req,
        code: String,
        message: String,
        retryable: bool,
        committer: &mut Committer,
        shifts: &mut VecDeque<Shift>,
    ) {
        let (attempts, runs) = match req.before {
            RequestState::Failed { attempts, runs, .. } => (attempts, runs),
            _ => (0, 0),
        };
        self.pass_failures += 1;
        // Server text, bound for the outcome log, the output and `report`.
        use crate::provider::bounded::{MAX_LABEL, MAX_MESSAGE, clean_text};
        let f = FailureRecord {
            code: clean_text(&code, MAX_LABEL),
            message: clean_text(&message, MAX_MESSAGE),
            retryable,
            attempts: attempts + 1,
            ran: true,
            runs: Some(runs + 1),
        };
        shifts.push_back(Shift {
            before: req.before,
            after: failed_state(&f),
            input_tokens: 0,
            output_tokens: 0,
        });
        committer.push(req.fingerprint, Outcome::Failure(f));
    }

    fn endpoint_failed(&mut self, endpoint: usize, now: u64, refused: bool) {
        let was_out = self.endpoints.list[endpoint].cool_until_ms > now;
        if let Failed::CooledDown { until_ms } = self.endpoints.failed(endpoint, now, refused)
            && !was_out
        {
            self.event(&format!(
                "endpoint {} left out for {} ({})",
                self.client.shown(endpoint),
                status::short_duration(until_ms.saturating_sub(now).div_ceil(1000)),
                self.last_errors[endpoint].as_deref().unwrap_or("failing")
            ));
        }
        if self.endpoints.all_failing() {
            self.outage_since_ms.get_or_insert(now);
        }
    }

    fn last_error_text(&self) -> String {
        (0..self.client.endpoints())
            .map(|i| {
                format!(
                    "{}: {}",
                    self.client.shown(i),
                    self.last_errors[i].as_deref().unwrap_or("-")
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The error that ends the run, with what to do next.
    fn stop_error(&self, result: &Attempted, reason: &Reason) -> ProviderError {
        let Attempted::Answer {
            status,
            request_id,
            body,
            line,
            ..
        } = result
        else {
            unreachable!("only answers stop a run")
        };
        let env = &self.frame.spec.endpoint.key_env;
        let (kind, hint) = match reason {
            Reason::Quota => (
                ErrorKind::Quota,
                "the account is out of credit or over its spend limit: add credit or raise the limit, then run `batchgrader resume`".to_string(),
            ),
            Reason::Unauthorized => (
                ErrorKind::Auth,
                format!("check that {env} holds a valid key for these servers"),
            ),
            Reason::Forbidden => (
                ErrorKind::Permission,
                format!("the key in {env} may not use this model or endpoint"),
            ),
            Reason::RetryAfterTooLong { wait } => (
                ErrorKind::RetryAfterTooLong,
                format!(
                    "the server asked to wait {}; run `batchgrader resume` then",
                    status::short_duration(wait.as_secs())
                ),
            ),
            _ => (ErrorKind::Rejected, "run `batchgrader resume`".to_string()),
        };
        let message = match line {
            LineOutcome::Failure(f) => f.message.clone(),
            LineOutcome::Success(_) => body.chars().take(200).collect(),
        };
        ProviderError::new("chat completion", kind)
            .with_status(Some(*status))
            .with_request_id(request_id.clone())
            .with_detail(self.client.redact(&message))
            .with_hint(Some(format!(
                "{hint} (recorded answers are kept; only requests without one are sent again)"
            )))
    }

    /// The tokens of a typical request, for the server's token headers.
    fn typical_tokens(&self) -> u64 {
        let p = self.frame.plan;
        p.prompt_tokens.checked_div(p.outstanding).unwrap_or(0)
            + output_cap(self.frame.spec.request())
    }

    fn rates(&mut self) -> (f64, f64) {
        let now = Instant::now();
        let tokens = self.run_input + self.run_output;
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

    fn view(&mut self, in_flight: usize) -> DirectView {
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
    fn outage_since(&self) -> Option<u64> {
        self.outage_since_ms
            .map(|ms| self.frame.started_at + ms / 1000)
    }

    fn snapshot(&mut self, state: RunState, in_flight: usize, message: Option<String>) -> Snapshot {
        // Direct mode pays standard prices: there is no batch receipt;
        // the spend is at standard prices.
        let f = &self.frame;
        let snap = super::snapshot_of(
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
            direct: Some(self.view(in_flight)),
            ..snap
        }
    }

    fn write_status(&mut self, state: RunState, in_flight: usize) {
        // A request out for long: say what the run is waiting for.
        let waiting = crate::provider::watch::waiting_line(
            self.client.watch().oldest().as_ref(),
            Duration::from_secs(3),
        );
        let snap = self.snapshot(state, in_flight, waiting);
        self.frame.show(&snap);
    }

    /// A plain progress line (CI, pipes).
    fn progress_line(&mut self, in_flight: usize) {
        let view = self.view(in_flight);
        let lines = status::direct_lines(&view, state::now_secs());
        self.event(&lines.join("; "));
    }

    /// The usage recorded since the last ledger line, as one more line
    /// (one per run and part, so `costs` sees direct runs as they go).
    fn write_ledger(&mut self) -> Result<()> {
        let (i, o) = (self.run_input, self.run_output);
        let (di, do_) = (
            i.saturating_sub(self.ledger_written.0),
            o.saturating_sub(self.ledger_written.1),
        );
        if di == 0 && do_ == 0 {
            return Ok(());
        }
        self.ledger_seq += 1;
        let id = format!("{}-{}", self.run_id, self.ledger_seq);
        self.record_usage(&id, di, do_)?;
        self.ledger_written = (i, o);
        Ok(())
    }

    /// One ledger line of `input` and `output` tokens at the plan's prices
    /// (standard prices: direct mode has no batch discount).
    fn record_usage(&self, id: &str, input: u64, output: u64) -> Result<()> {
        let cost = self.cost(input, output);
        self.frame.record_usage(&LedgerEntry {
            input_tokens: input,
            output_tokens: output,
            cost_usd: cost,
            standard_cost_usd: cost,
            ..self.frame.ledger_entry(id)
        })
    }

    /// The usage a killed run made durable and never put in the ledger
    /// (`ledger::shortfall`), as one line.
    fn recover_ledger(&mut self) -> Result<()> {
        let path = self.frame.layout().ledger();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(Error::io("read", &path, e)),
        };
        let (i, o) = ledger::shortfall(&text, self.frame.job(), self.held);
        if i == 0 && o == 0 {
            return Ok(());
        }
        self.record_usage(&format!("{}-recovered", self.run_id), i, o)?;
        self.event(&format!(
            "the ledger was missing {i} input and {o} output tokens of answers an interrupted run recorded; added"
        ));
        Ok(())
    }

    /// The direct lane's closing words; the frame does the rest.
    fn finish(&mut self, ending: Ending) -> Result<(Ending, Summary)> {
        let secs = self.frame.started.elapsed().as_secs_f64();
        let message = match &ending {
            Ending::Finished if self.done > 0 => Some(format!(
                "direct mode: {} requests answered in {:.1} s ({:.0}/s), cost at standard prices",
                crate::ui::num(self.done),
                secs,
                self.done as f64 / secs.max(0.001)
            )),
            Ending::Finished => None,
            Ending::Interrupted => Some(
                "interrupted: every recorded answer is kept; run `batchgrader resume` to send the rest"
                    .to_string(),
            ),
            Ending::Halted(r) => Some(format!("halted: {r}")),
            Ending::Detached => None,
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
            ..super::snapshot_of(f.job(), f.plan, tally, state, f.started_at, spent)
        })
    }
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
