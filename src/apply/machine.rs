//! The decisions of `apply`, as pure functions over plain data: what to do
//! next with each unit, and which requests to send again. The shell in
//! `apply/mod.rs` reads the state, asks these, performs the side effects
//! and records each transition.

use crate::state::Phase;

/// What the shell knows about one unit when deciding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnitView {
    pub id: u32,
    pub phase: Phase,
    /// Not to be submitted before this time (ms), after `token_limit_exceeded`.
    pub not_before_ms: Option<u64>,
    /// When the next status check is due (ms); `None` means now.
    pub next_poll_ms: Option<u64>,
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
    /// False after `--detach` has submitted what it could.
    pub submit: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Look for a batch this unit may have created before a crash; adopt it or create one.
    Recover(u32),
    /// Upload the unit's file (if not yet) and create its batch.
    Submit(u32),
    Poll(u32),
    Download(u32),
    Ingest(u32),
}

/// The next step of the loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Work to do now, in this order.
    pub actions: Vec<Action>,
    /// Nothing to do before this time (ms), when `actions` is empty and work remains.
    pub wake_at_ms: Option<u64>,
    /// Every unit is merged.
    pub all_merged: bool,
}

/// Units that hold a provider batch slot.
pub fn in_flight(phase: Phase) -> bool {
    matches!(phase, Phase::Uploaded | Phase::Creating | Phase::Submitted)
}

/// Decide what to do now. Finishing work comes first (ingest, download,
/// recovery), then status checks that are due, then new submissions while
/// fewer than `max_in_flight` batches are out. Ordered by unit id within
/// each kind, so runs are reproducible.
pub fn step(units: &[UnitView], now_ms: u64, admission: Admission) -> Step {
    let Admission {
        max_in_flight,
        token_budget,
        submit,
    } = admission;
    let mut units = units.to_vec();
    units.sort_by_key(|u| u.id);
    let mut actions = Vec::new();
    for u in &units {
        match u.phase {
            Phase::Downloaded => actions.push(Action::Ingest(u.id)),
            Phase::Ended => actions.push(Action::Download(u.id)),
            Phase::Creating => actions.push(Action::Recover(u.id)),
            _ => {}
        }
    }
    for u in &units {
        if u.phase == Phase::Submitted && u.next_poll_ms.is_none_or(|t| t <= now_ms) {
            actions.push(Action::Poll(u.id));
        }
    }
    let mut busy = units.iter().filter(|u| in_flight(u.phase)).count();
    let mut enqueued: u64 = units
        .iter()
        .filter(|u| in_flight(u.phase))
        .map(|u| u.tokens)
        .sum();
    if submit {
        for u in &units {
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
    let all_merged = units.iter().all(|u| u.phase == Phase::Merged);
    let wake_at_ms = if actions.is_empty() && !all_merged {
        units
            .iter()
            .filter_map(|u| match u.phase {
                Phase::Submitted => Some(u.next_poll_ms.unwrap_or(now_ms)),
                Phase::Planned | Phase::Uploaded if submit => u.not_before_ms,
                _ => None,
            })
            .min()
    } else {
        None
    };
    Step {
        actions,
        wake_at_ms,
        all_merged,
    }
}

/// What is known of one outstanding request after its latest attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestState {
    Succeeded,
    Failed {
        retryable: bool,
        attempts: u32,
    },
    /// In no merged unit yet.
    Pending,
}

/// Should this request be sent again? Retryable failures are, until
/// `max_attempts` attempts in all have been made.
pub fn should_retry(state: RequestState, max_attempts: u32) -> bool {
    match state {
        RequestState::Failed {
            retryable: true,
            attempts,
        } => attempts < max_attempts,
        _ => false,
    }
}

/// Poll backoff: start at `interval`, grow by half each time, cap at `max`.
pub fn next_poll_interval_ms(previous_ms: Option<u64>, interval_ms: u64, max_ms: u64) -> u64 {
    match previous_ms {
        None => interval_ms.min(max_ms),
        Some(p) => (p + p / 2).clamp(interval_ms.min(max_ms), max_ms),
    }
}

/// Wait before resubmitting after `token_limit_exceeded`: the enqueued-token
/// quota frees as other batches end, so back off 1, 2, 4... minutes, at most 30.
pub fn token_limit_backoff_secs(creates: u32) -> u64 {
    (60u64 << creates.saturating_sub(1).min(5)).min(1800)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::*;
    use Phase::*;

    fn u(id: u32, phase: Phase) -> UnitView {
        UnitView {
            id,
            phase,
            not_before_ms: None,
            next_poll_ms: None,
            tokens: 100,
        }
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
        // (units, max in flight, submit allowed, expected actions, all merged)
        type Case = (Vec<UnitView>, usize, bool, Vec<Action>, bool);
        let cases: Vec<Case> = vec![
            (vec![], 2, true, vec![], true),
            (vec![u(1, Merged), u(2, Merged)], 2, true, vec![], true),
            // Fresh plan: only as many submissions as slots.
            (
                vec![u(1, Planned), u(2, Planned), u(3, Planned)],
                2,
                true,
                vec![Submit(1), Submit(2)],
                false,
            ),
            // An uploaded unit holds a slot and is resumed first.
            (
                vec![u(1, Uploaded), u(2, Planned), u(3, Planned)],
                2,
                true,
                vec![Submit(1), Submit(2)],
                false,
            ),
            // Crash between create intent and record: recover, and the slot is taken.
            (
                vec![u(1, Creating), u(2, Planned)],
                1,
                true,
                vec![Recover(1)],
                false,
            ),
            // Finishing work before new work; polls of submitted units.
            (
                vec![
                    u(1, Downloaded),
                    u(2, Ended),
                    u(3, Submitted),
                    u(4, Planned),
                ],
                2,
                true,
                vec![Ingest(1), Download(2), Poll(3), Submit(4)],
                false,
            ),
            // --detach after submitting: no new submissions.
            (
                vec![u(1, Submitted), u(2, Planned)],
                4,
                false,
                vec![Poll(1)],
                false,
            ),
        ];
        for (units, max, submit, want, merged) in cases {
            let s = step(&units, 1000, adm(max, submit));
            assert_eq!(s.actions, want, "{units:?}");
            assert_eq!(s.all_merged, merged, "{units:?}");
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
        // One is out already: room for one more.
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
    fn retry_rule() {
        let cases = [
            (RequestState::Succeeded, 3, false),
            (RequestState::Pending, 3, false),
            (
                RequestState::Failed {
                    retryable: true,
                    attempts: 1,
                },
                3,
                true,
            ),
            (
                RequestState::Failed {
                    retryable: true,
                    attempts: 3,
                },
                3,
                false,
            ),
            (
                RequestState::Failed {
                    retryable: false,
                    attempts: 1,
                },
                3,
                false,
            ),
            (
                RequestState::Failed {
                    retryable: true,
                    attempts: 1,
                },
                1,
                false,
            ),
        ];
        for (state, max, want) in cases {
            assert_eq!(should_retry(state, max), want, "{state:?} max {max}");
        }
    }

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

    #[test]
    fn token_limit_backoff() {
        assert_eq!(token_limit_backoff_secs(1), 60);
        assert_eq!(token_limit_backoff_secs(2), 120);
        assert_eq!(token_limit_backoff_secs(10), 1800);
    }
}
