//! The decisions of `apply`, as pure functions over plain data. The shell in
//! `apply/runner/` reads the state and the clock, asks these, performs
//! the side effects they name and records each transition. Nothing here
//! sleeps, reads the clock or does I/O, so every branch is table-tested.

use crate::cost::Price;
use crate::provider::{EndKind, RemoteState, StepClass};
use crate::state::{Backoff, FailureRecord, Phase, UnitRecord};
use crate::status::{Receipt, RunState, Totals};

use super::Ending;

// ---------------------------------------------------------------- the loop

/// What the shell knows about one unit when deciding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnitView {
    pub id: u32,
    pub phase: Phase,
    /// Not to be submitted before this time (ms), after a requeue.
    pub not_before_ms: Option<u64>,
    /// When the next status check is due (ms); `None` means now.
    pub next_poll_ms: Option<u64>,
    /// Parked after a transient failure until this time (ms).
    pub parked_until_ms: Option<u64>,
    /// Given up by this run (`retry.give_up_after`): it does nothing more in it.
    pub given_up: bool,
    /// Prompt tokens the unit enqueues at the provider.
    pub tokens: u64,
}

/// Limits on what may be out at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    pub max_in_flight: usize,
    /// Enqueued-token budget (`chunking.max_tokens`): a unit is not
    /// submitted while the tokens out plus its own would pass it, unless
    /// nothing is out (a unit alone never exceeds it; the plan made sure).
    pub token_budget: Option<u64>,
    /// False after `cancel`, or once the halt policy has spoken.
    pub submit: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Look for a batch this unit's submit may have made; adopt it or create one.
    Recover(u32),
    /// Stage the unit's file (if not yet) and create its batch.
    Submit(u32),
    Poll(u32),
    Download(u32),
    Ingest(u32),
}

impl Action {
    pub fn unit(self) -> u32 {
        match self {
            Action::Recover(id)
            | Action::Submit(id)
            | Action::Poll(id)
            | Action::Download(id)
            | Action::Ingest(id) => id,
        }
    }
}

/// The next step of the loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Work to do now, in this order.
    pub actions: Vec<Action>,
    /// Nothing to do before this time (ms), when `actions` is empty and work remains.
    pub wake_at_ms: Option<u64>,
    /// Every unit is merged, or given up for this run.
    pub all_merged: bool,
    /// Some unit not given up has a batch out, or may have (creating), or
    /// one ended and not merged: there is something to collect.
    pub collecting: bool,
}

impl Step {
    /// `--detach` is done once nothing but status checks (or nothing) is
    /// left to do now: what could be submitted is out.
    pub fn detach_done(&self) -> bool {
        self.actions.iter().all(|a| matches!(a, Action::Poll(_)))
    }
}

/// Units that hold a provider batch slot.
pub fn in_flight(phase: Phase) -> bool {
    matches!(phase, Phase::Uploaded | Phase::Creating | Phase::Submitted)
}

/// Decide what to do now. Finishing work comes first (ingest, download,
/// recovery), then status checks that are due, then new submissions while
/// fewer than `max_in_flight` batches are out. No submission is made while
/// a batch has ended but is not merged yet: its results must be judged by
/// the halt policy before more is spent. A parked unit does nothing until
/// its time comes. Ordered by unit id within each kind, so runs are
/// reproducible.
pub fn step(units: &[UnitView], now_ms: u64, admission: Admission) -> Step {
    let Admission {
        max_in_flight,
        token_budget,
        submit,
    } = admission;
    let mut units = units.to_vec();
    units.sort_by_key(|u| u.id);
    let parked = |u: &UnitView| u.given_up || u.parked_until_ms.is_some_and(|t| t > now_ms);
    let mut actions = Vec::new();
    for u in units.iter().filter(|u| !parked(u)) {
        match u.phase {
            Phase::Downloaded => actions.push(Action::Ingest(u.id)),
            Phase::Ended => actions.push(Action::Download(u.id)),
            Phase::Creating => actions.push(Action::Recover(u.id)),
            _ => {}
        }
    }
    for u in units.iter().filter(|u| !parked(u)) {
        if u.phase == Phase::Submitted && u.next_poll_ms.is_none_or(|t| t <= now_ms) {
            actions.push(Action::Poll(u.id));
        }
    }
    // A unit given up does nothing more in this run: it is not judged in
    // it, and no slot it holds frees in it. Waiting for it would wait on
    // nothing (an Anthropic chunk given up with its results unread held
    // every later chunk back for good), so it neither blocks submissions
    // nor counts against the limits; the halt policy counts it as a failed
    // chunk instead.
    let live = |u: &&UnitView| !u.given_up;
    let unjudged = units
        .iter()
        .filter(live)
        .any(|u| matches!(u.phase, Phase::Ended | Phase::Downloaded));
    let mut busy = units
        .iter()
        .filter(live)
        .filter(|u| in_flight(u.phase))
        .count();
    let mut enqueued: u64 = units
        .iter()
        .filter(live)
        .filter(|u| in_flight(u.phase))
        .map(|u| u.tokens)
        .sum();
    if submit && !unjudged {
        for u in units.iter().filter(|u| !parked(u)) {
            let waiting = matches!(u.phase, Phase::Planned | Phase::Uploaded);
            // An uploaded unit already holds its slot and its tokens.
            let needs_slot = u.phase == Phase::Planned;
            if waiting && u.not_before_ms.is_none_or(|t| t <= now_ms) {
                if needs_slot {
                    let over_budget =
                        token_budget.is_some_and(|b| busy > 0 && enqueued + u.tokens > b);
                    if busy >= max_in_flight || over_budget {
                        continue;
                    }
                    busy += 1;
                    enqueued += u.tokens;
                }
                actions.push(Action::Submit(u.id));
            }
        }
    }
    let all_merged = units.iter().all(|u| u.phase == Phase::Merged || u.given_up);
    let collecting = units.iter().any(|u| {
        !u.given_up
            && matches!(
                u.phase,
                Phase::Creating | Phase::Submitted | Phase::Ended | Phase::Downloaded
            )
    });
    let wake_at_ms = if actions.is_empty() && !all_merged {
        units
            .iter()
            .filter(|u| !u.given_up)
            .filter_map(|u| {
                let due = match u.phase {
                    Phase::Submitted => Some(u.next_poll_ms.unwrap_or(now_ms)),
                    // A time already past is no reason to wake: waking at
                    // once with nothing to do would spin.
                    Phase::Planned | Phase::Uploaded if submit => {
                        u.not_before_ms.filter(|t| *t > now_ms)
                    }
                    Phase::Merged => None,
                    _ => None,
                };
                match u.parked_until_ms.filter(|t| *t > now_ms) {
                    Some(p) if u.phase != Phase::Merged => Some(due.map_or(p, |d| d.max(p))),
                    _ => due,
                }
            })
            .min()
    } else {
        None
    };
    Step {
        actions,
        wake_at_ms,
        all_merged,
        collecting,
    }
}

/// The loop's invariant, checked after every step: the loop can make
/// progress. It can when it is done (every unit merged or given up), when
/// it is ending (submissions off and nothing left to collect: a halt or a
/// `cancel`), when the step names work to do now, or when it names a time
/// still to come at which something is due (a poll, a parked unit's retry,
/// a requeued unit's submit). Anything else would wait on nothing for good,
/// or wake at once with nothing to do, for good: `Some` says which units
/// are stuck and how, for the internal error that ends the run instead.
pub fn stalled(units: &[UnitView], now_ms: u64, submit: bool, step: &Step) -> Option<String> {
    let ending = !submit && !step.collecting;
    let due_later = step.wake_at_ms.is_some_and(|t| t > now_ms);
    if step.all_merged || ending || !step.actions.is_empty() || due_later {
        return None;
    }
    let mut stuck: Vec<String> = units
        .iter()
        .filter(|u| u.phase != Phase::Merged)
        .map(|u| {
            format!(
                "chunk {} {}{}",
                u.id,
                format!("{:?}", u.phase).to_lowercase(),
                if u.given_up { " (given up)" } else { "" }
            )
        })
        .collect();
    stuck.sort();
    Some(format!(
        "the batch loop has nothing to do and nothing to wait for{}: {}",
        match step.wake_at_ms {
            Some(t) => format!(" (its next wake-up, at {t} ms, is not after now, {now_ms} ms)"),
            None => String::new(),
        },
        stuck.join(", ")
    ))
}

// ---------------------------------------------------------- step failures

/// What a failed provider step means for its unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepVerdict {
    /// Wait, recorded in the unit, then try the step again; the other units go on.
    Park(Backoff),
    /// The unit's steps have failed for longer than `retry.give_up_after`:
    /// it becomes a failed chunk.
    GiveUp { reason: String },
    /// Retrying cannot help: stop the run with the error.
    Stop,
}

/// The wait after `failures` transient failures in a row: 1, 2, 4 ... s,
/// at most a minute: a long outage costs a call a minute per chunk, and a
/// chunk is back within a minute of the provider's return.
pub fn park_secs(failures: u32) -> u64 {
    (1u64 << failures.saturating_sub(1).min(16)).min(60)
}

/// Decide what a failed step means. Transient and unclear failures park the
/// unit with a growing, bounded wait; the unit that keeps failing for
/// `give_up_after_secs` is given up; a final failure stops the run.
pub fn on_step_error(
    class: StepClass,
    step: &str,
    error: &str,
    previous: Option<&Backoff>,
    now_secs: u64,
    give_up_after_secs: u64,
) -> StepVerdict {
    if class == StepClass::Final {
        return StepVerdict::Stop;
    }
    let failures = previous.map_or(0, |b| b.failures) + 1;
    let since = previous.map_or(now_secs, |b| b.since);
    if now_secs.saturating_sub(since) >= give_up_after_secs {
        return StepVerdict::GiveUp {
            reason: format!(
                "its provider calls kept failing for {} (retry.give_up_after); last, {step}: {error}",
                humantime::format_duration(std::time::Duration::from_secs(
                    now_secs.saturating_sub(since)
                ))
            ),
        };
    }
    StepVerdict::Park(Backoff {
        step: step.to_string(),
        failures,
        since,
        retry_at: now_secs + park_secs(failures),
        last_error: error.to_string(),
    })
}

// ------------------------------------------------------- remote state

/// What the runner does with a batch's reported state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusVerdict {
    /// Still running: record the label and counts, poll again later.
    KeepPolling,
    /// The provider would not run it now: stage nothing new, submit the same
    /// file again after `wait_secs`.
    Requeue { wait_secs: u64 },
    /// Ended: fetch the results, then account for every request.
    Fetch,
}

/// The meaning of a reported state. A requeue waits the poll interval,
/// doubling with each refused submit, at most 30 minutes: the enqueued-token
/// quota frees as other batches end (OpenAI Batch FAQ).
pub fn on_status(state: &RemoteState, submits: u32, poll_interval_secs: u64) -> StatusVerdict {
    match state {
        RemoteState::Running { .. } => StatusVerdict::KeepPolling,
        RemoteState::Requeue { .. } => StatusVerdict::Requeue {
            wait_secs: (poll_interval_secs.max(1) << submits.saturating_sub(1).min(16)).min(1800),
        },
        RemoteState::Ended { .. } => StatusVerdict::Fetch,
    }
}

/// The outcome given to a request that is in no result line of its ended
/// batch: `(code, message, retryable)`; none of them ran. A batch refused as a whole means our
/// file is at fault and sending it again will not help; otherwise the
/// request simply did not run (trust the lines, not `request_counts`, which
/// need not add up on expired or cancelled batches: warmbly/warmbly#333,
/// BerriAI/litellm#36034).
pub fn missing_line(end: &EndKind) -> (String, String, bool) {
    match end {
        EndKind::Failed { reason } => ("batch_failed".into(), reason.clone(), false),
        EndKind::Expired => (
            "batch_expired".into(),
            "the batch expired before this request ran".into(),
            true,
        ),
        EndKind::Cancelled => (
            "batch_cancelled".into(),
            "the batch was cancelled before this request ran".into(),
            true,
        ),
        EndKind::Completed => (
            "not_executed".into(),
            "the batch ended without a result for this request".into(),
            true,
        ),
        EndKind::Lost { reason } => ("batch_lost".into(), reason.clone(), true),
    }
}

/// How many times in all a result file in which no line is a result line
/// is fetched: such a file is most often not a result file at all (a
/// proxy's error page), and fetching it again costs nothing, while sending
/// its requests again is paid twice. A server that keeps serving it is not
/// waited on for ever, though.
pub const FETCHES_OF_AN_UNREADABLE_FILE: u32 = 3;

/// What to do with a result file some of whose lines are not result lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadLines {
    /// Throw the file away and fetch it again, as a failed download.
    FetchAgain,
    /// Merge what can be read; a request whose line cannot be read counts as
    /// not executed (`missing_line`) and is sent again within its rounds.
    NotExecuted,
}

/// The one judgement of unreadable result lines, so that the same lines
/// mean the same in every chunk: with `good` readable lines and `bad`
/// unreadable ones, after `failed_fetches` failed downloads in a row of
/// this unit. Only a file with no readable line at all is fetched again,
/// and only up to `FETCHES_OF_AN_UNREADABLE_FILE` times.
pub fn bad_lines(good: u64, bad: u64, failed_fetches: u32) -> BadLines {
    if good == 0 && bad > 0 && failed_fetches + 1 < FETCHES_OF_AN_UNREADABLE_FILE {
        BadLines::FetchAgain
    } else {
        BadLines::NotExecuted
    }
}

// ---------------------------------------------------------------- twins

/// A batch the provider lists as made by a create of this job's plan (its
/// metadata says which chunk, attempt and submit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListedBatch<'a> {
    pub id: &'a str,
    pub chunk: u32,
    pub attempt: u32,
    pub submit: u32,
    /// Not ended yet: it may still run requests, and bill them.
    pub running: bool,
    /// Ended having maybe run something (not refused as a whole, or with
    /// usage reported).
    pub billed: bool,
}

/// A unit as twin-finding needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnitIdent<'a> {
    pub chunk: u32,
    pub attempt: u32,
    /// Creates of the unit so far: the submit number of its latest.
    pub creates: u32,
    pub phase: Phase,
    pub batch_id: Option<&'a str>,
}

/// What a listed batch of this job's plan is to the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Twin {
    /// A unit holds it, or the ledger has it: the job knows it.
    Recorded,
    /// A create whose answer is not recorded yet: the unit's recovery
    /// adopts it (`find`), it is no twin.
    Unsettled,
    /// Refused as a whole, or not run: it costs nothing and holds nothing.
    Idle,
    /// A batch made behind the job's back (a gateway that retried a create
    /// on its own): cancel it while it runs, record its usage once it ends.
    Found,
}

/// Judge one listed batch. `ledger` holds the batch ids of the job's
/// ledger lines (batches merged in this or an earlier plan generation, and
/// twins already recorded).
pub fn twin(
    listed: &ListedBatch,
    units: &[UnitIdent],
    ledger: &std::collections::HashSet<String>,
) -> Twin {
    if ledger.contains(listed.id) || units.iter().any(|u| u.batch_id == Some(listed.id)) {
        return Twin::Recorded;
    }
    let adoptable = units.iter().any(|u| {
        u.phase == Phase::Creating
            && u.batch_id.is_none()
            && (u.chunk, u.attempt, u.creates) == (listed.chunk, listed.attempt, listed.submit)
    });
    if adoptable {
        return Twin::Unsettled;
    }
    if !listed.running && !listed.billed {
        return Twin::Idle;
    }
    Twin::Found
}

// ------------------------------------------------------------ requests

/// What is known of one outstanding request after its latest attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestState {
    Succeeded {
        parsed: bool,
    },
    Failed {
        retryable: bool,
        /// Rounds (batch attempts) the request was in.
        attempts: u32,
        /// Of those, the rounds in which it ran and failed.
        runs: u32,
    },
    /// In no merged unit yet.
    Pending,
}

/// How many times more rounds than `max_attempts` a request may be in: a
/// round in which it never ran (its batch expired or was cancelled first,
/// or it is in no result line) does not use up one of its attempts, but a
/// provider that never runs it must not keep the job going forever.
pub const NEVER_RAN_FACTOR: u32 = 3;

/// Should this request be sent again? A retryable failure is, while the
/// request has run (and failed) fewer than `max_attempts` times and been in
/// fewer than `NEVER_RAN_FACTOR` times as many rounds.
pub fn should_retry(state: RequestState, max_attempts: u32) -> bool {
    match state {
        RequestState::Failed {
            retryable: true,
            attempts,
            runs,
        } => runs < max_attempts && attempts < max_attempts.saturating_mul(NEVER_RAN_FACTOR),
        _ => false,
    }
}

/// The requests of a job counted by where they stand.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Answered and parsed.
    pub graded: u64,
    /// Answered, but the answer did not parse.
    pub parse_failures: u64,
    /// Failed with no attempt left (or not retryable).
    pub api_failures: u64,
    /// No final outcome yet (not sent, running, or to be retried).
    pub pending: u64,
}

impl Tally {
    fn count(&mut self, state: RequestState, max_attempts: u32) -> &mut u64 {
        match state {
            RequestState::Succeeded { parsed: true } => &mut self.graded,
            RequestState::Succeeded { parsed: false } => &mut self.parse_failures,
            s @ RequestState::Failed { .. } if should_retry(s, max_attempts) => &mut self.pending,
            RequestState::Failed { .. } => &mut self.api_failures,
            RequestState::Pending => &mut self.pending,
        }
    }

    pub fn add(&mut self, state: RequestState, max_attempts: u32) {
        *self.count(state, max_attempts) += 1;
    }

    /// A request moved from `from` to `to` (a merge): the tally follows
    /// without reading every request again.
    pub fn shift(&mut self, from: RequestState, to: RequestState, max_attempts: u32) {
        let n = self.count(from, max_attempts);
        *n = n.saturating_sub(1);
        self.add(to, max_attempts);
    }

    /// Requests with a final outcome.
    pub fn settled(&self) -> u64 {
        self.graded + self.parse_failures + self.api_failures
    }
}

// ------------------------------------------------------- sending again

/// What `--retry-failed` and `--retry-parse-failures` ask for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryAsked {
    /// Rows whose last outcome is a final API failure (a 4xx, a refused
    /// batch line, a failure with no attempt left).
    pub failed: bool,
    /// Rows whose answer did not parse.
    pub parse_failures: bool,
}

impl RetryAsked {
    pub fn any(&self) -> bool {
        self.failed || self.parse_failures
    }
}

pub use crate::state::RETRY_REQUESTED;

/// Does what was asked give this request a fresh set of attempts? Only a
/// final outcome does: a request pending, or with a retryable failure and
/// attempts left, is sent anyway (granting it again would hand it more
/// attempts than `retry.max_attempts`), and a parsed answer is never touched.
pub fn grant_retry(state: RequestState, max_attempts: u32, asked: RetryAsked) -> bool {
    match state {
        RequestState::Succeeded { parsed } => !parsed && asked.parse_failures,
        s @ RequestState::Failed { .. } => asked.failed && !should_retry(s, max_attempts),
        RequestState::Pending => false,
    }
}

/// The outcome recorded for a request granted a fresh set of attempts,
/// before anything is sent: a retryable failure that has used none, so
/// both lanes send it as they send any retry ([`should_retry`]), the
/// attempts it then uses count from nothing, and a kill before the send
/// leaves it to be sent by the next run (once: it is no longer final, so
/// the flag given again does not grant it twice).
pub fn granted() -> FailureRecord {
    FailureRecord {
        code: RETRY_REQUESTED.into(),
        message: "to be sent again (--retry-failed or --retry-parse-failures); no answer yet"
            .into(),
        retryable: true,
        attempts: 0,
        ran: false,
        runs: Some(0),
    }
}

/// The rounds a request has been in once a unit of round `unit_attempt`
/// is merged, given the rounds its earlier failure counted (`None`: no
/// earlier failure). One more than before, never more than the unit's
/// round: a request granted a fresh set of attempts (0 rounds) that goes
/// out in round 5 has been in one round of its new set, while a failure of
/// an earlier plan (which may count more rounds than this plan's unit has)
/// starts again with the unit's round, as it always did.
pub fn rounds_after(earlier: Option<u32>, unit_attempt: u32) -> u32 {
    match earlier {
        Some(a) => unit_attempt.min(a.saturating_add(1)),
        None => unit_attempt,
    }
}

/// Should the summary point at `--retry-failed`? When final API failures
/// are at least half of the rows with an outcome: the cause is then most
/// likely the server or the request (a gateway without its database, a
/// refused grammar), fixed once for all rows; a few failures among many
/// graded rows are better read in the output first.
pub fn suggest_retry_failed(failed: u64, graded: u64, parse_failures: u64) -> bool {
    failed > 0
        && failed.saturating_mul(2) >= failed.saturating_add(graded).saturating_add(parse_failures)
}

// ---------------------------------------------------------------- halt

pub use crate::spec::HaltPolicy;

/// A unit that failed as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkFailure {
    pub unit: u32,
    pub batch_id: Option<String>,
    pub what: String,
}

/// The units that count as failed chunks: refused, expired or lost
/// batches, and units given up after `retry.give_up_after` (in any phase).
pub fn chunk_failures(units: &[UnitRecord]) -> Vec<ChunkFailure> {
    units
        .iter()
        .filter(|u| u.phase == Phase::Merged || u.given_up.is_some())
        .filter_map(|u| {
            let what = match (&u.given_up, &u.end) {
                (Some(r), _) => format!("given up: {r}"),
                (None, Some(EndKind::Failed { reason })) => format!("failed: {reason}"),
                (None, Some(EndKind::Expired)) => "expired".to_string(),
                (None, Some(EndKind::Lost { reason })) => format!("lost: {reason}"),
                _ => return None,
            };
            Some(ChunkFailure {
                unit: u.id,
                batch_id: u.batch_id.clone(),
                what,
            })
        })
        .collect()
}

pub use crate::agreement::GateCheck;

/// The gate's numbers of finished agreement figures: κ is Cohen's for a
/// categorical field and the quadratic-weighted one for a numeric field
/// (whose interval is not computed, so its lower bound is the estimate);
/// accuracy is exact agreement.
pub fn gate_numbers(agreement: &[crate::agreement::FieldAgreement]) -> Vec<GateNumbers> {
    agreement
        .iter()
        .map(|a| match (&a.categorical, &a.ordinal) {
            (Some(c), _) => GateNumbers {
                field: a.field.clone(),
                n: c.n,
                accuracy: (c.n > 0).then_some(c.accuracy),
                kappa: c.kappa,
                kappa_low: c.kappa_ci.map(|i| i[0]),
            },
            (_, Some(o)) => GateNumbers {
                field: a.field.clone(),
                n: o.n,
                accuracy: (o.n > 0).then_some(o.exact),
                kappa: o.weighted_kappa,
                kappa_low: None,
            },
            _ => GateNumbers {
                field: a.field.clone(),
                n: 0,
                accuracy: None,
                kappa: None,
                kappa_low: None,
            },
        })
        .collect()
}

pub use crate::agreement::GateNumbers;
pub use crate::spec::Gate;

/// Judge the quality gate over each gold field. A field is judged once
/// `gate.min_gold_rows` of its gold rows are graded; κ is compared on its
/// estimate, or on the lower end of its 95% interval with
/// `gate_on: lower_bound` (halting only when the judge is surely under). An
/// undefined κ (one class only) is not compared: there is nothing to say.
pub fn quality_gate(gate: &Gate, fields: &[GateNumbers]) -> GateCheck {
    let judged: Vec<&GateNumbers> = fields
        .iter()
        .filter(|f| f.n >= gate.min_gold_rows)
        .collect();
    if judged.is_empty() {
        let most = fields.iter().map(|f| f.n).max().unwrap_or(0);
        return GateCheck::NotJudged(format!(
            "not judged: {most} gold row{} compared, halt.min_gold_rows is {}",
            if most == 1 { "" } else { "s" },
            gate.min_gold_rows
        ));
    }
    let mut passed = Vec::new();
    for f in judged {
        if let Some(min) = gate.min_kappa
            && let Some(kappa) = f.kappa
        {
            let (value, what) = match (gate.on, f.kappa_low) {
                (crate::spec::GateOn::LowerBound, Some(low)) => {
                    (low, "the lower end of κ's 95% interval")
                }
                _ => (kappa, "κ"),
            };
            if value < min {
                return GateCheck::Failed(format!(
                    "{}: {what} {value:.3} is under halt.min_kappa {min:.3} ({} gold rows compared)",
                    f.field, f.n
                ));
            }
            passed.push(format!("{}: {what} {value:.3} ≥ {min:.3}", f.field));
        }
        if let Some(min) = gate.min_accuracy
            && let Some(acc) = f.accuracy
        {
            if acc < min {
                return GateCheck::Failed(format!(
                    "{}: accuracy {:.1}% is under halt.min_accuracy {:.1}% ({} gold rows compared)",
                    f.field,
                    acc * 100.0,
                    min * 100.0,
                    f.n
                ));
            }
            passed.push(format!(
                "{}: accuracy {:.1}% ≥ {:.1}%",
                f.field,
                acc * 100.0,
                min * 100.0
            ));
        }
    }
    if passed.is_empty() {
        return GateCheck::NotJudged(
            "not judged: κ is undefined for every field (one class only)".into(),
        );
    }
    GateCheck::Passed(passed.join("; "))
}

/// Should the job stop? Checked after every merge and before every
/// submission, so that nothing more is spent once the policy is passed.
/// The failure rate counts final API failures and parse failures (shown
/// apart) over the requests with a final outcome.
pub fn halt(
    policy: &HaltPolicy,
    tally: &Tally,
    spent_usd: f64,
    failures: &[ChunkFailure],
    quality: &GateCheck,
) -> Option<String> {
    // With nothing left to send, the gate stops no spending: the run
    // finishes, and its end says the gate failed (an exit code of its own).
    if let GateCheck::Failed(why) = quality
        && tally.pending > 0
    {
        return Some(format!("quality gate: {why}"));
    }
    if let Some(budget) = policy.max_cost_usd
        && spent_usd > budget
    {
        return Some(format!(
            "spend {} passed halt.max_cost_usd {}",
            crate::cost::usd(spent_usd),
            crate::cost::usd(budget)
        ));
    }
    if policy.on_chunk_failure
        && let Some(f) = failures.first()
    {
        return Some(format!(
            "chunk {} (batch {}) {} (halt.on_chunk_failure)",
            f.unit,
            f.batch_id.as_deref().unwrap_or("-"),
            f.what
        ));
    }
    if let Some(max) = policy.max_failure_rate {
        let settled = tally.settled();
        let bad = tally.api_failures + tally.parse_failures;
        if settled > 0 && bad as f64 / settled as f64 > max {
            return Some(format!(
                "failure rate {:.1}% ({} API failures, {} parse failures of {} answered requests) is above halt.max_failure_rate {:.1}%",
                bad as f64 * 100.0 / settled as f64,
                tally.api_failures,
                tally.parse_failures,
                settled,
                max * 100.0
            ));
        }
    }
    None
}

/// `halt.max_cost_usd` refuses a start whose upper estimate is above it, or
/// that has no upper bound at all. `untouched`: nothing was submitted yet.
pub fn halt_before_start(
    policy: &HaltPolicy,
    estimate_high: Option<f64>,
    has_estimate: bool,
    untouched: bool,
) -> Option<String> {
    let budget = policy.max_cost_usd?;
    if !untouched || !has_estimate {
        return None;
    }
    match estimate_high {
        Some(high) if high > budget => Some(format!(
            "the estimated cost, up to {}, is above halt.max_cost_usd {}; nothing was submitted. Raise the budget or lower request.max_tokens",
            crate::cost::usd(high),
            crate::cost::usd(budget)
        )),
        None => Some(format!(
            "halt.max_cost_usd {} is set, but the request sets no max_tokens, so the cost has no upper bound; nothing was submitted. Set request.max_tokens",
            crate::cost::usd(budget)
        )),
        _ => None,
    }
}

// ------------------------------------------------------------- snapshot

/// The totals of the status snapshot, from the plan's counts and the tally.
pub fn totals(rows: u64, to_grade: u64, already_done: u64, tally: &Tally) -> Totals {
    let succeeded = tally.graded + tally.parse_failures;
    let failed = tally.api_failures;
    Totals {
        rows,
        to_grade,
        already_done,
        succeeded,
        parse_failures: tally.parse_failures,
        failed,
        pending: to_grade.saturating_sub(succeeded + failed),
    }
}

/// A running batch's counts (completed, failed) after a poll: never below
/// what was shown before, since a provider's counters can lag between its
/// replicas (a poll answered by a stale one), and the second value says
/// whether they moved, so the store keeps what the live view showed and
/// `status` after a Ctrl-C never shows less than the live view did.
pub fn remote_progress(before: (u64, u64), reported: (u64, u64)) -> ((u64, u64), bool) {
    let now = (before.0.max(reported.0), before.1.max(reported.1));
    (now, now != before)
}

/// Paid at batch prices against what standard prices would have cost, and
/// what the prompt cache saved at batch prices (given the plan's price).
pub fn receipt(units: &[UnitRecord], price: Option<&Price>) -> Receipt {
    let paid: f64 = units.iter().map(|u| u.cost_usd).sum();
    let standard: f64 = units.iter().map(|u| u.standard_cost_usd).sum();
    let (write, read) = units.iter().fold((0u64, 0u64), |(w, r), u| {
        (w + u.cache_write_tokens, r + u.cache_read_tokens)
    });
    Receipt {
        paid_usd: paid,
        standard_usd: standard,
        saved_usd: (standard - paid).max(0.0),
        cache_saved_usd: price
            .filter(|_| write + read > 0)
            .map(|p| crate::cost::cache_saving(p, write, read, true)),
    }
}

/// How a run closes, whatever its lane: whether the output is written, and
/// the state `status` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closing {
    pub write_output: bool,
    pub state: RunState,
}

/// The output is written when every request has its final outcome, and
/// after a halt (what was graded and paid for is kept), except a halt that
/// refused the start: nothing was sent, and a file of "not graded" rows
/// must not replace an earlier, better output. Interrupted and detached
/// runs write nothing: batches or requests are still to come.
pub fn closing(ending: &Ending, refused_start: bool) -> Closing {
    let (write_output, state) = match ending {
        Ending::Finished => (true, RunState::Finished),
        Ending::Halted(_) => (!refused_start, RunState::Halted),
        Ending::Interrupted | Ending::Detached => (false, RunState::Detached),
        // The direct lane takes over in the same process and writes the output.
        Ending::Deadline => (false, RunState::Running),
    };
    Closing {
        write_output,
        state,
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_batch_s_progress_never_goes_backwards() {
        // (before, reported by the poll, shown after, moved)
        let table = [
            ((0, 0), (150, 0), (150, 0), true),
            ((400, 2), (150, 1), (400, 2), false),
            ((400, 2), (400, 2), (400, 2), false),
            ((400, 2), (380, 5), (400, 5), true),
            ((400, 2), (1_250, 0), (1_250, 2), true),
        ];
        for (before, reported, shown, moved) in table {
            assert_eq!(
                remote_progress(before, reported),
                (shown, moved),
                "{before:?} {reported:?}"
            );
        }
    }
    use super::*;

    #[test]
    fn closing_table() {
        let halted = || Ending::Halted("budget".into());
        // (ending, refused start, output written, state)
        let cases = [
            (Ending::Finished, false, true, RunState::Finished),
            (halted(), false, true, RunState::Halted),
            (halted(), true, false, RunState::Halted),
            (Ending::Interrupted, false, false, RunState::Detached),
            (Ending::Detached, false, false, RunState::Detached),
            (Ending::Deadline, false, false, RunState::Running),
        ];
        for (ending, refused, write, state) in cases {
            assert_eq!(
                closing(&ending, refused),
                Closing {
                    write_output: write,
                    state
                },
                "{ending:?} refused={refused}"
            );
        }
    }
    use Action::*;
    use Phase::*;

    fn u(id: u32, phase: Phase) -> UnitView {
        UnitView {
            id,
            phase,
            not_before_ms: None,
            next_poll_ms: None,
            parked_until_ms: None,
            given_up: false,
            tokens: 100,
        }
    }

    fn parked(mut v: UnitView, until: u64) -> UnitView {
        v.parked_until_ms = Some(until);
        v
    }

    fn adm(max_in_flight: usize, submit: bool) -> Admission {
        Admission {
            max_in_flight,
            token_budget: None,
            submit,
        }
    }

    #[test]
    fn step_table() {
        // (case, units, max in flight, submit allowed, expected actions, all merged)
        type Case = (&'static str, Vec<UnitView>, usize, bool, Vec<Action>, bool);
        let cases: Vec<Case> = vec![
            ("nothing", vec![], 2, true, vec![], true),
            (
                "all merged",
                vec![u(1, Merged), u(2, Merged)],
                2,
                true,
                vec![],
                true,
            ),
            (
                "fresh plan: as many submissions as slots",
                vec![u(1, Planned), u(2, Planned), u(3, Planned)],
                2,
                true,
                vec![Submit(1), Submit(2)],
                false,
            ),
            (
                "an uploaded unit holds a slot and goes first",
                vec![u(1, Uploaded), u(2, Planned), u(3, Planned)],
                2,
                true,
                vec![Submit(1), Submit(2)],
                false,
            ),
            (
                "crash between intent and record: recover, the slot is taken",
                vec![u(1, Creating), u(2, Planned)],
                1,
                true,
                vec![Recover(1)],
                false,
            ),
            (
                "finishing work first; nothing new while a batch is unjudged",
                vec![
                    u(1, Downloaded),
                    u(2, Ended),
                    u(3, Submitted),
                    u(4, Planned),
                ],
                4,
                true,
                vec![Ingest(1), Download(2), Poll(3)],
                false,
            ),
            (
                "one in flight, its batch ended: merge before the next submit",
                vec![u(1, Ended), u(2, Planned)],
                1,
                true,
                vec![Download(1)],
                false,
            ),
            (
                "merged: the next one goes",
                vec![u(1, Merged), u(2, Planned)],
                1,
                true,
                vec![Submit(2)],
                false,
            ),
            (
                "submissions off (cancel, halt): polls only",
                vec![u(1, Submitted), u(2, Planned)],
                4,
                false,
                vec![Poll(1)],
                false,
            ),
            (
                "a parked unit waits, the others go on",
                vec![parked(u(1, Creating), 5000), u(2, Submitted), u(3, Planned)],
                3,
                true,
                vec![Poll(2), Submit(3)],
                false,
            ),
            (
                "a parked unit whose time has come acts",
                vec![parked(u(1, Creating), 1000), parked(u(2, Submitted), 999)],
                3,
                true,
                vec![Recover(1), Poll(2)],
                false,
            ),
            (
                "a parked planned unit does not take a slot",
                vec![parked(u(1, Planned), 9000), u(2, Planned)],
                1,
                true,
                vec![Submit(2)],
                false,
            ),
        ];
        for (name, units, max, submit, want, merged) in cases {
            let s = step(&units, 1000, adm(max, submit));
            assert_eq!(s.actions, want, "{name}");
            assert_eq!(s.all_merged, merged, "{name}");
        }
    }

    #[test]
    fn waits_for_the_earliest_due_time() {
        let mut a = u(1, Submitted);
        a.next_poll_ms = Some(5000);
        let mut b = u(2, Submitted);
        b.next_poll_ms = Some(3000);
        let mut c = u(3, Uploaded);
        c.not_before_ms = Some(2500);
        let s = step(&[a, b, c], 1000, adm(4, true));
        assert!(s.actions.is_empty());
        assert_eq!(s.wake_at_ms, Some(2500));
        let s = step(&[a, b, c], 3000, adm(4, true));
        assert_eq!(s.actions, vec![Poll(2), Submit(3)]);
        // A parked unit wakes the loop when its wait ends, not before.
        let p = parked(u(4, Creating), 4000);
        let s = step(&[a, p], 1000, adm(4, true));
        assert_eq!(s.wake_at_ms, Some(4000));
        // A parked unit whose poll is due later than its park waits for the poll.
        let mut q = parked(u(5, Submitted), 2000);
        q.next_poll_ms = Some(3500);
        assert_eq!(step(&[q], 1000, adm(4, true)).wake_at_ms, Some(3500));
    }

    #[test]
    fn given_up_units_rest_and_count_as_settled() {
        let mut g = u(2, Submitted);
        g.given_up = true;
        let s = step(&[u(1, Merged), g], 0, adm(4, true));
        assert!(
            s.actions.is_empty() && s.all_merged && !s.collecting,
            "{s:?}"
        );
        assert_eq!(s.wake_at_ms, None);
        let s = step(&[u(1, Submitted), g], 0, adm(4, true));
        assert_eq!(s.actions, vec![Poll(1)]);
        assert!(!s.all_merged && s.collecting);
        let mut p = u(3, Planned);
        p.given_up = true;
        assert!(step(&[p], 0, adm(4, true)).actions.is_empty());
    }

    #[test]
    fn a_unit_given_up_blocks_nothing() {
        // Given up with its results unread (an Anthropic file of bad lines):
        // the next chunk still goes, and its slot is not counted.
        let mut g = u(1, Ended);
        g.given_up = true;
        let s = step(&[g, u(2, Planned)], 0, adm(1, true));
        assert_eq!(s.actions, vec![Submit(2)], "{s:?}");
        let mut out = u(1, Submitted);
        out.given_up = true;
        let s = step(&[out, u(2, Planned)], 0, adm(1, true));
        assert_eq!(s.actions, vec![Submit(2)], "{s:?}");
    }

    #[test]
    fn stalled_table() {
        let waiting = |wake| Step {
            actions: vec![],
            wake_at_ms: wake,
            all_merged: false,
            collecting: false,
        };
        let mut gone = u(1, Ended);
        gone.given_up = true;
        // (case, units, submit allowed, step, stalled)
        let cases: Vec<(&str, Vec<UnitView>, bool, Step, bool)> = vec![
            (
                "done",
                vec![u(1, Merged)],
                true,
                Step {
                    all_merged: true,
                    ..waiting(None)
                },
                false,
            ),
            (
                "work now",
                vec![u(1, Submitted)],
                true,
                Step {
                    actions: vec![Poll(1)],
                    collecting: true,
                    ..waiting(None)
                },
                false,
            ),
            (
                "a poll to come",
                vec![u(1, Submitted)],
                true,
                waiting(Some(2000)),
                false,
            ),
            (
                "halting, nothing to collect: the run ends",
                vec![u(1, Planned)],
                false,
                waiting(None),
                false,
            ),
            (
                "given up but unjudged, the next chunk waiting on it",
                vec![gone, u(2, Planned)],
                true,
                waiting(None),
                true,
            ),
            (
                "halting, a batch to collect, no wake-up",
                vec![u(1, Submitted)],
                false,
                Step {
                    collecting: true,
                    ..waiting(None)
                },
                true,
            ),
            (
                "a wake-up already past: a spin",
                vec![u(1, Uploaded)],
                true,
                waiting(Some(500)),
                true,
            ),
        ];
        for (name, units, submit, st, want) in cases {
            let got = stalled(&units, 1000, submit, &st);
            assert_eq!(got.is_some(), want, "{name}: {got:?}");
        }
        let why = stalled(&[gone, u(2, Planned)], 1000, true, &waiting(None)).unwrap();
        assert!(
            why.contains("chunk 1 ended (given up)") && why.contains("chunk 2 planned"),
            "{why}"
        );
    }

    /// Every state of two units (phase, given up, parked, requeued, poll
    /// times before, at and after now), with submissions on and off and one
    /// or two slots: `step` never leaves the loop waiting on nothing.
    #[test]
    fn no_state_of_the_units_stalls_the_loop() {
        let phases = [
            Planned, Uploaded, Creating, Submitted, Ended, Downloaded, Merged,
        ];
        let times = [None, Some(500), Some(1000), Some(1500)];
        let mut one = Vec::new();
        for phase in phases {
            for given_up in [false, true] {
                for parked_until_ms in times {
                    for not_before_ms in times {
                        for next_poll_ms in times {
                            one.push(UnitView {
                                id: 0,
                                phase,
                                not_before_ms,
                                next_poll_ms,
                                parked_until_ms,
                                given_up,
                                tokens: 100,
                            });
                        }
                    }
                }
            }
        }
        let mut checked = 0u64;
        for a in &one {
            for b in &one {
                let units = [UnitView { id: 1, ..*a }, UnitView { id: 2, ..*b }];
                for (max, submit) in [(1, true), (2, true), (1, false)] {
                    let s = step(&units, 1000, adm(max, submit));
                    if let Some(why) = stalled(&units, 1000, submit, &s) {
                        panic!("{units:?} (slots {max}, submit {submit}): {why}");
                    }
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, (one.len() * one.len() * 3) as u64);
    }

    #[test]
    fn twin_table() {
        let unit = |chunk, creates, phase, batch_id| UnitIdent {
            chunk,
            attempt: 1,
            creates,
            phase,
            batch_id,
        };
        let units = [
            unit(1, 1, Submitted, Some("b1")),
            unit(2, 1, Creating, None),
            unit(3, 2, Uploaded, None),
            unit(4, 1, Merged, Some("b4")),
        ];
        let ledger: std::collections::HashSet<String> = ["b-old".to_string()].into();
        let listed = |id, chunk, submit, running, billed| ListedBatch {
            id,
            chunk,
            attempt: 1,
            submit,
            running,
            billed,
        };
        // (case, listed batch, verdict)
        let cases = [
            (
                "a unit's batch",
                listed("b1", 1, 1, true, false),
                Twin::Recorded,
            ),
            (
                "a merged unit's",
                listed("b4", 4, 1, false, true),
                Twin::Recorded,
            ),
            (
                "in the ledger",
                listed("b-old", 9, 1, false, true),
                Twin::Recorded,
            ),
            (
                "the create a creating unit waits to adopt",
                listed("b2", 2, 1, true, false),
                Twin::Unsettled,
            ),
            (
                "a second batch of a submitted chunk, running",
                listed("b1x", 1, 1, true, false),
                Twin::Found,
            ),
            (
                "a second batch of a merged chunk, ended",
                listed("b4x", 4, 1, false, true),
                Twin::Found,
            ),
            (
                "a requeued submit's refused batch",
                listed("b3", 3, 1, false, false),
                Twin::Idle,
            ),
            (
                "a batch of a submit the unit has not made yet",
                listed("b3y", 3, 3, true, false),
                Twin::Found,
            ),
        ];
        for (name, l, want) in cases {
            assert_eq!(twin(&l, &units, &ledger), want, "{name}");
        }
    }

    #[test]
    fn bad_lines_table() {
        use BadLines::*;
        // (good lines, bad lines, failed fetches before, verdict)
        let cases = [
            (5, 0, 0, NotExecuted),
            (5, 2, 0, NotExecuted),
            (0, 0, 0, NotExecuted),
            (0, 3, 0, FetchAgain),
            (0, 3, 1, FetchAgain),
            (0, 3, 2, NotExecuted),
            (0, 3, 9, NotExecuted),
            (1, 3, 0, NotExecuted),
        ];
        for (good, bad, failed, want) in cases {
            assert_eq!(bad_lines(good, bad, failed), want, "{good} {bad} {failed}");
        }
    }

    #[test]
    fn detach_is_done_when_only_polls_remain() {
        let s = step(&[u(1, Planned), u(2, Planned)], 0, adm(1, true));
        assert!(!s.detach_done());
        let s = step(&[u(1, Submitted), u(2, Planned)], 0, adm(1, true));
        assert_eq!(s.actions, vec![Poll(1)]);
        assert!(s.detach_done());
        let s = step(&[u(1, Ended)], 0, adm(1, true));
        assert!(!s.detach_done());
    }

    #[test]
    fn token_budget_admission() {
        let budget = |b| Admission {
            max_in_flight: 10,
            token_budget: Some(b),
            submit: true,
        };
        let fresh = [u(1, Planned), u(2, Planned), u(3, Planned)];
        // 100 tokens each: a budget of 250 lets two out.
        assert_eq!(
            step(&fresh, 0, budget(250)).actions,
            vec![Submit(1), Submit(2)]
        );
        let one_out = [u(1, Submitted), u(2, Planned), u(3, Planned)];
        assert_eq!(
            step(&one_out, 0, budget(250)).actions,
            vec![Poll(1), Submit(2)]
        );
        // A unit bigger than the budget still goes when nothing is out.
        let mut big = u(1, Planned);
        big.tokens = 1000;
        assert_eq!(step(&[big], 0, budget(250)).actions, vec![Submit(1)]);
    }

    #[test]
    fn step_error_table() {
        let prev = |failures, since| Backoff {
            step: "create".into(),
            failures,
            since,
            retry_at: 0,
            last_error: "x".into(),
        };
        let park = |failures, since, retry_at| {
            StepVerdict::Park(Backoff {
                step: "status".into(),
                failures,
                since,
                retry_at,
                last_error: "HTTP 503".into(),
            })
        };
        let now = 10_000;
        let cases: Vec<(&str, StepClass, Option<Backoff>, StepVerdict)> = vec![
            ("final stops", StepClass::Final, None, StepVerdict::Stop),
            (
                "final stops even when parked before",
                StepClass::Final,
                Some(prev(3, now - 10)),
                StepVerdict::Stop,
            ),
            (
                "first transient parks 1 s",
                StepClass::Transient,
                None,
                park(1, now, now + 1),
            ),
            (
                "unclear parks too",
                StepClass::Unclear,
                None,
                park(1, now, now + 1),
            ),
            (
                "the wait grows and the first failure's time is kept",
                StepClass::Transient,
                Some(prev(3, now - 100)),
                park(4, now - 100, now + 8),
            ),
            (
                "bounded at a minute",
                StepClass::Transient,
                Some(prev(20, now - 3000)),
                park(21, now - 3000, now + 60),
            ),
        ];
        for (name, class, previous, want) in cases {
            let got = on_step_error(class, "status", "HTTP 503", previous.as_ref(), now, 3600);
            assert_eq!(got, want, "{name}");
        }
        let gave_up = on_step_error(
            StepClass::Transient,
            "status",
            "HTTP 503",
            Some(&prev(40, now - 3600)),
            now,
            3600,
        );
        match gave_up {
            StepVerdict::GiveUp { reason } => {
                assert!(
                    reason.contains("1h") && reason.contains("HTTP 503"),
                    "{reason}"
                )
            }
            other => panic!("not given up: {other:?}"),
        }
    }

    #[test]
    fn park_waits() {
        let waits: Vec<u64> = (1..=11).map(park_secs).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60, 60, 60]);
        assert_eq!(park_secs(u32::MAX), 60);
    }

    #[test]
    fn status_table() {
        let running = RemoteState::Running {
            label: "in_progress".into(),
            done: 1,
            failed: 0,
        };
        let requeue = RemoteState::Requeue {
            label: "failed".into(),
            reason: "token_limit_exceeded".into(),
        };
        let ended = RemoteState::Ended {
            label: "completed".into(),
            end: EndKind::Completed,
            results: vec![],
            usage: None,
        };
        assert_eq!(on_status(&running, 1, 30), StatusVerdict::KeepPolling);
        assert_eq!(on_status(&ended, 1, 30), StatusVerdict::Fetch);
        let waits: Vec<StatusVerdict> = [1, 2, 3, 10, 40]
            .iter()
            .map(|n| on_status(&requeue, *n, 30))
            .collect();
        let w = |s| StatusVerdict::Requeue { wait_secs: s };
        assert_eq!(waits, [w(30), w(60), w(120), w(1800), w(1800)]);
        // A sub-second poll interval still waits a second.
        assert_eq!(on_status(&requeue, 1, 0), w(1));
    }

    #[test]
    fn missing_line_table() {
        let cases = [
            (EndKind::Completed, "not_executed", true),
            (EndKind::Expired, "batch_expired", true),
            (EndKind::Cancelled, "batch_cancelled", true),
            (
                EndKind::Lost {
                    reason: "HTTP 404".into(),
                },
                "batch_lost",
                true,
            ),
            (
                EndKind::Failed {
                    reason: "invalid_json_line (line 3): bad".into(),
                },
                "batch_failed",
                false,
            ),
        ];
        for (end, code, retryable) in cases {
            let (c, m, r) = missing_line(&end);
            assert_eq!((c.as_str(), r), (code, retryable), "{end:?}");
            assert!(!m.is_empty());
        }
        let (_, m, _) = missing_line(&EndKind::Failed {
            reason: "invalid_json_line (line 3): bad".into(),
        });
        assert!(m.contains("line 3"));
    }

    #[test]
    fn retry_and_tally() {
        let failed = |retryable, attempts| RequestState::Failed {
            retryable,
            attempts,
            runs: attempts,
        };
        let rounds = |attempts, runs| RequestState::Failed {
            retryable: true,
            attempts,
            runs,
        };
        let cases = [
            (
                "succeeded",
                RequestState::Succeeded { parsed: true },
                3,
                false,
            ),
            ("pending", RequestState::Pending, 3, false),
            ("retryable, attempts left", failed(true, 1), 3, true),
            ("retryable, attempts spent", failed(true, 3), 3, false),
            ("final", failed(false, 1), 3, false),
            ("one attempt only", failed(true, 1), 1, false),
            ("rounds it never ran in do not count", rounds(3, 0), 3, true),
            (
                "expired twice, then failed when it ran",
                rounds(3, 1),
                3,
                true,
            ),
            ("ran and failed max times", rounds(5, 3), 3, false),
            ("up to three times as many rounds", rounds(8, 2), 3, true),
            ("then final", rounds(9, 0), 3, false),
        ];
        for (name, state, max, want) in cases {
            assert_eq!(should_retry(state, max), want, "{name}");
        }
        let mut t = Tally::default();
        for s in [
            RequestState::Succeeded { parsed: true },
            RequestState::Succeeded { parsed: true },
            RequestState::Succeeded { parsed: false },
            failed(true, 1),
            failed(true, 3),
            failed(false, 1),
            RequestState::Pending,
        ] {
            t.add(s, 3);
        }
        assert_eq!(
            t,
            Tally {
                graded: 2,
                parse_failures: 1,
                api_failures: 2,
                pending: 2
            }
        );
        assert_eq!(t.settled(), 5);
        // A merge moves one request: pending to graded, failed to pending.
        t.shift(
            RequestState::Pending,
            RequestState::Succeeded { parsed: true },
            3,
        );
        t.shift(failed(false, 1), failed(true, 1), 3);
        assert_eq!((t.graded, t.api_failures, t.pending), (3, 1, 2), "{t:?}");
    }

    #[test]
    fn which_requests_a_retry_flag_sends_again() {
        let failed = |retryable, attempts| RequestState::Failed {
            retryable,
            attempts,
            runs: attempts,
        };
        let none = RetryAsked::default();
        let both = RetryAsked {
            failed: true,
            parse_failures: true,
        };
        let failed_only = RetryAsked {
            failed: true,
            ..none
        };
        let parse_only = RetryAsked {
            parse_failures: true,
            ..none
        };
        let parsed = RequestState::Succeeded { parsed: true };
        let unparsed = RequestState::Succeeded { parsed: false };
        // (case, state, what was asked, granted)
        let cases = [
            ("a 400, nothing asked", failed(false, 1), none, false),
            ("a 400, --retry-failed", failed(false, 1), failed_only, true),
            (
                "a 400, --retry-parse-failures only",
                failed(false, 1),
                parse_only,
                false,
            ),
            (
                "retryable, attempts spent: final",
                failed(true, 3),
                failed_only,
                true,
            ),
            (
                "retryable, attempts left: sent anyway, not granted more",
                failed(true, 1),
                both,
                false,
            ),
            (
                "granted and not sent yet: not granted twice",
                failed(true, 0),
                both,
                false,
            ),
            ("parsed answers are never touched", parsed, both, false),
            (
                "an unparsed answer, --retry-failed",
                unparsed,
                failed_only,
                false,
            ),
            (
                "an unparsed answer, --retry-parse-failures",
                unparsed,
                parse_only,
                true,
            ),
            ("pending: sent anyway", RequestState::Pending, both, false),
        ];
        for (name, state, asked, want) in cases {
            assert_eq!(grant_retry(state, 3, asked), want, "{name}");
        }
        // What a grant records is sent again, with every attempt left.
        let g = granted();
        let state = RequestState::Failed {
            retryable: g.retryable,
            attempts: g.attempts,
            runs: g.runs(),
        };
        assert!(should_retry(state, 1));
        assert!(!grant_retry(state, 1, both));
        let mut t = Tally::default();
        t.add(state, 1);
        assert_eq!(t.pending, 1);
    }

    #[test]
    fn rounds_after_a_merge() {
        // (earlier rounds, the unit's round, rounds after)
        let cases = [
            (None, 1, 1),
            (Some(1), 2, 2),
            // A fresh set of attempts, sent in a late round: its first.
            (Some(0), 5, 1),
            (Some(1), 6, 2),
            // A failure of an earlier plan starts again with the unit's round.
            (Some(3), 1, 1),
            // Merged again after a kill: the unit's round, not one more.
            (Some(2), 2, 2),
        ];
        for (earlier, unit, want) in cases {
            assert_eq!(rounds_after(earlier, unit), want, "{earlier:?} {unit}");
        }
    }

    #[test]
    fn when_the_summary_points_at_retry_failed() {
        // (failed, graded, parse failures, suggested)
        let cases = [
            (0, 0, 0, false),
            (10, 0, 0, true),
            (5, 5, 0, true),
            (5, 4, 2, false),
            (1, 99, 0, false),
            (0, 100, 0, false),
            (u64::MAX, u64::MAX, 0, true),
        ];
        for (failed, graded, parse, want) in cases {
            assert_eq!(
                suggest_retry_failed(failed, graded, parse),
                want,
                "{failed} {graded} {parse}"
            );
        }
    }

    fn unit(id: u32, phase: Phase) -> UnitRecord {
        UnitRecord::planned(id, 1, format!("c{id}"), String::new(), 10, 100, 50).with_phase(phase)
    }

    #[test]
    fn halt_table() {
        let tally = |graded, parse_failures, api_failures| Tally {
            graded,
            parse_failures,
            api_failures,
            pending: 0,
        };
        let rate = |r| HaltPolicy {
            max_failure_rate: Some(r),
            ..HaltPolicy::default()
        };
        let failed_chunk = vec![ChunkFailure {
            unit: 2,
            batch_id: Some("batch_x".into()),
            what: "expired".into(),
        }];
        let on_chunk = HaltPolicy {
            on_chunk_failure: true,
            ..HaltPolicy::default()
        };
        let budget = HaltPolicy {
            max_cost_usd: Some(1.0),
            ..HaltPolicy::default()
        };
        // (case, policy, tally, spent, chunk failures, expected text in the reason)
        type Case = (
            &'static str,
            HaltPolicy,
            Tally,
            f64,
            Vec<ChunkFailure>,
            Option<&'static str>,
        );
        let cases: Vec<Case> = vec![
            (
                "no policy",
                HaltPolicy::default(),
                tally(0, 0, 10),
                99.0,
                failed_chunk.clone(),
                None,
            ),
            ("rate below", rate(0.10), tally(95, 2, 3), 0.0, vec![], None),
            (
                "rate equal is not above",
                rate(0.10),
                tally(9, 0, 1),
                0.0,
                vec![],
                None,
            ),
            (
                "rate above, API and parse failures named apart",
                rate(0.10),
                tally(7, 1, 2),
                0.0,
                vec![],
                Some(
                    "failure rate 30.0% (2 API failures, 1 parse failures of 10 answered requests)",
                ),
            ),
            (
                "rate with nothing answered",
                rate(0.0),
                tally(0, 0, 0),
                0.0,
                vec![],
                None,
            ),
            (
                "chunk failure ignored without the flag",
                HaltPolicy::default(),
                tally(1, 0, 0),
                0.0,
                failed_chunk.clone(),
                None,
            ),
            (
                "chunk failure with the flag",
                on_chunk,
                tally(1, 0, 0),
                0.0,
                failed_chunk.clone(),
                Some("chunk 2 (batch batch_x) expired (halt.on_chunk_failure)"),
            ),
            (
                "spend under budget",
                budget,
                tally(1, 0, 0),
                0.99,
                vec![],
                None,
            ),
            (
                "spend over budget",
                budget,
                tally(1, 0, 0),
                1.01,
                vec![],
                Some("spend $1.01 passed halt.max_cost_usd $1.00"),
            ),
        ];
        let quiet = GateCheck::NotJudged("no quality gate".into());
        for (name, policy, t, spent, failures, want) in cases {
            let got = halt(&policy, &t, spent, &failures, &quiet);
            match want {
                None => assert_eq!(got, None, "{name}"),
                Some(w) => {
                    let got = got.unwrap_or_else(|| panic!("{name}: no halt"));
                    assert!(got.contains(w), "{name}: {got}");
                }
            }
        }
        // A failed quality gate halts whatever else holds; a passed one does not.
        let failed = GateCheck::Failed("answer: κ 0.200 is under halt.min_kappa 0.600".into());
        let mut open = tally(1, 0, 0);
        open.pending = 5;
        let got = halt(&HaltPolicy::default(), &open, 0.0, &[], &failed);
        assert_eq!(
            got.as_deref(),
            Some("quality gate: answer: κ 0.200 is under halt.min_kappa 0.600")
        );
        // Nothing left to send: nothing to stop; the end says it.
        assert_eq!(
            halt(&HaltPolicy::default(), &tally(1, 0, 0), 0.0, &[], &failed),
            None
        );
        let passed = GateCheck::Passed("answer: κ 0.9 ≥ 0.6".into());
        assert_eq!(
            halt(&HaltPolicy::default(), &tally(1, 0, 0), 0.0, &[], &passed),
            None
        );
    }

    #[test]
    fn quality_gate_table() {
        use crate::spec::GateOn;
        let gate = |min_kappa: Option<f64>, min_accuracy: Option<f64>, on: GateOn| Gate {
            min_kappa,
            min_accuracy,
            min_gold_rows: 50,
            on,
        };
        let field = |n: u64, accuracy: f64, kappa: Option<f64>, low: Option<f64>| GateNumbers {
            field: "answer".into(),
            n,
            accuracy: Some(accuracy),
            kappa,
            kappa_low: low,
        };
        let est = GateOn::Estimate;
        let low = GateOn::LowerBound;
        // (name, gate, fields, want: "not", "pass" or "fail" and a word of the message)
        let cases: Vec<(&str, Gate, Vec<GateNumbers>, &str, &str)> = vec![
            (
                "too few gold rows",
                gate(Some(0.6), None, est),
                vec![field(49, 0.1, Some(0.1), None)],
                "not",
                "49 gold rows compared, halt.min_gold_rows is 50",
            ),
            (
                "no field at all",
                gate(Some(0.6), None, est),
                vec![],
                "not",
                "0 gold rows",
            ),
            (
                "kappa at the minimum passes",
                gate(Some(0.6), None, est),
                vec![field(50, 0.8, Some(0.6), None)],
                "pass",
                "κ 0.600 ≥ 0.600",
            ),
            (
                "kappa under",
                gate(Some(0.6), None, est),
                vec![field(50, 0.8, Some(0.59), None)],
                "fail",
                "κ 0.590 is under halt.min_kappa 0.600 (50 gold rows compared)",
            ),
            (
                "lower bound under the minimum fails",
                gate(Some(0.6), None, low),
                vec![field(80, 0.8, Some(0.7), Some(0.55))],
                "fail",
                "the lower end of κ's 95% interval 0.550",
            ),
            (
                "estimate over, bound ignored without lower_bound",
                gate(Some(0.6), None, est),
                vec![field(80, 0.8, Some(0.7), Some(0.55))],
                "pass",
                "κ 0.700",
            ),
            (
                "lower bound missing: the estimate is used",
                gate(Some(0.6), None, low),
                vec![field(80, 0.8, Some(0.7), None)],
                "pass",
                "κ 0.700",
            ),
            (
                "undefined kappa is not compared",
                gate(Some(0.6), None, est),
                vec![field(80, 1.0, None, None)],
                "not",
                "κ is undefined",
            ),
            (
                "accuracy under",
                gate(None, Some(0.9), est),
                vec![field(60, 0.85, Some(0.8), None)],
                "fail",
                "accuracy 85.0% is under halt.min_accuracy 90.0%",
            ),
            (
                "both pass",
                gate(Some(0.5), Some(0.8), est),
                vec![field(60, 0.85, Some(0.8), None)],
                "pass",
                "accuracy 85.0% ≥ 80.0%",
            ),
            (
                "one field under fails the gate",
                gate(Some(0.5), None, est),
                vec![
                    field(60, 0.9, Some(0.8), None),
                    GateNumbers {
                        field: "answer.urgency".into(),
                        ..field(60, 0.5, Some(0.3), None)
                    },
                ],
                "fail",
                "answer.urgency: κ 0.300",
            ),
            (
                "a field with too few rows is left out, the other judged",
                gate(Some(0.5), None, est),
                vec![
                    field(60, 0.9, Some(0.8), None),
                    GateNumbers {
                        field: "answer.urgency".into(),
                        ..field(10, 0.5, Some(0.1), None)
                    },
                ],
                "pass",
                "answer: κ 0.800",
            ),
        ];
        for (name, g, fields, want, words) in cases {
            let got = quality_gate(&g, &fields);
            let (kind, msg) = match &got {
                GateCheck::NotJudged(m) => ("not", m),
                GateCheck::Passed(m) => ("pass", m),
                GateCheck::Failed(m) => ("fail", m),
            };
            assert_eq!(kind, want, "{name}: {got:?}");
            assert!(msg.contains(words), "{name}: {msg}");
        }
    }

    #[test]
    fn halt_before_start_table() {
        let budget = HaltPolicy {
            max_cost_usd: Some(5.0),
            ..HaltPolicy::default()
        };
        let cases = [
            (
                "no budget",
                HaltPolicy::default(),
                Some(99.0),
                true,
                true,
                false,
            ),
            ("under", budget, Some(4.0), true, true, false),
            ("over", budget, Some(6.0), true, true, true),
            ("no upper bound", budget, None, true, true, true),
            ("already started", budget, Some(6.0), true, false, false),
            ("no price known", budget, None, false, true, false),
        ];
        for (name, policy, high, has_estimate, untouched, halts) in cases {
            assert_eq!(
                halt_before_start(&policy, high, has_estimate, untouched).is_some(),
                halts,
                "{name}"
            );
        }
    }

    #[test]
    fn chunk_failures_table() {
        let mut expired = unit(1, Merged);
        expired.end = Some(EndKind::Expired);
        let mut refused = unit(2, Merged);
        refused.end = Some(EndKind::Failed {
            reason: "invalid_json_line".into(),
        });
        let mut given_up = unit(3, Submitted);
        given_up.given_up = Some("calls kept failing".into());
        let mut fine = unit(4, Merged);
        fine.end = Some(EndKind::Completed);
        let mut running = unit(5, Submitted);
        running.end = Some(EndKind::Expired);
        let got = chunk_failures(&[expired, refused, given_up, fine, running]);
        let what: Vec<(u32, &str)> = got.iter().map(|f| (f.unit, f.what.as_str())).collect();
        assert_eq!(
            what,
            [
                (1, "expired"),
                (2, "failed: invalid_json_line"),
                (3, "given up: calls kept failing")
            ]
        );
    }

    #[test]
    fn totals_and_receipt() {
        let t = Tally {
            graded: 6,
            parse_failures: 1,
            api_failures: 2,
            pending: 1,
        };
        let got = totals(12, 10, 2, &t);
        assert_eq!(
            (
                got.succeeded,
                got.parse_failures,
                got.failed,
                got.pending,
                got.already_done
            ),
            (7, 1, 2, 1, 2)
        );
        let mut a = unit(1, Merged);
        a.cost_usd = 0.5;
        a.standard_cost_usd = 1.0;
        let mut b = unit(2, Merged);
        b.cost_usd = 0.25;
        b.standard_cost_usd = 0.5;
        let r = receipt(&[a.clone(), b.clone()], None);
        assert_eq!((r.paid_usd, r.standard_usd, r.saved_usd), (0.75, 1.5, 0.75));
        assert_eq!(r.cache_saved_usd, None);
        // With cache reads and a price: 3M read at a batch cache price of
        // $0.10 against $1.00 input per 1M saves $2.70; with no cache
        // tokens there is no cache line, price or not.
        let price = crate::cost::Price {
            model: "m".into(),
            input_per_1m: 2.0,
            output_per_1m: 8.0,
            batch_input_per_1m: 1.0,
            batch_output_per_1m: 4.0,
            cached_input_per_1m: Some(0.2),
            cache_write_per_1m: None,
            prices_as_of: "2026-12-01".into(),
        };
        assert_eq!(receipt(&[a.clone()], Some(&price)).cache_saved_usd, None);
        b.cache_read_tokens = 3_000_000;
        let saved = receipt(&[a, b], Some(&price)).cache_saved_usd.unwrap();
        assert!((saved - 2.7).abs() < 1e-9, "{saved}");
    }
}
