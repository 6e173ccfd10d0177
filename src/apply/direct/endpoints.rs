//! Which base URL a request goes to: pure bookkeeping over plain numbers,
//! the clock passed in as milliseconds since the run started.
//!
//! The endpoint with the fewest requests outstanding wins (ties: the one
//! sent fewer requests), which spreads work over replicas of unequal speed
//! without a balancer in front. An endpoint that fails (refused connection,
//! network error, 5xx) several times in a row is left out for a cool-down
//! that doubles with each failure up to a ceiling; when it is due again it
//! gets one probe request, and only an answer to that brings it fully back,
//! so a replica that is still down costs one request per cool-down, not a
//! flood.

/// Failures in a row before an endpoint is left out (a refused connection
/// leaves it out at once: nothing listens there).
pub const FAILURES_BEFORE_COOL_DOWN: u32 = 3;
const FIRST_COOL_DOWN_MS: u64 = 1000;
pub const MAX_COOL_DOWN_MS: u64 = 30_000;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoint {
    pub outstanding: u32,
    pub sent: u64,
    /// Failures since the last answer.
    pub failures: u32,
    /// Left out until then (ms since the run started).
    pub cool_until_ms: u64,
    /// Cool-downs since the last answer (the next one doubles).
    pub cool_downs: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub list: Vec<Endpoint>,
}

/// What became of a failure report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failed {
    /// Still in use.
    Kept,
    /// Left out until then.
    CooledDown { until_ms: u64 },
}

impl Endpoints {
    pub fn new(n: usize) -> Endpoints {
        Endpoints {
            list: vec![Endpoint::default(); n.max(1)],
        }
    }

    /// The endpoint for the next request, or when one may be free again
    /// (`None`: only when an endpoint with a request out may free one).
    pub fn pick(&self, now_ms: u64) -> Result<usize, Option<u64>> {
        if let Some(i) = self.pick_where(now_ms, |_| true) {
            return Ok(i);
        }
        Err(self
            .list
            .iter()
            .filter(|e| e.cool_until_ms > now_ms)
            .map(|e| e.cool_until_ms)
            .min())
    }

    /// An endpoint other than `except` for a copy of a request out there
    /// too long (a hedge), by the same rule as [`Endpoints::pick`].
    pub fn pick_other(&self, now_ms: u64, except: usize) -> Option<usize> {
        self.pick_where(now_ms, |i| i != except)
    }

    fn pick_where(&self, now_ms: u64, allowed: impl Fn(usize) -> bool) -> Option<usize> {
        let usable = |e: &Endpoint| {
            // A failing endpoint gets one probe at a time.
            e.cool_until_ms <= now_ms && (e.failures == 0 || e.outstanding == 0)
        };
        self.list
            .iter()
            .enumerate()
            .filter(|(i, e)| allowed(*i) && usable(e))
            .min_by_key(|(_, e)| (e.outstanding, e.sent))
            .map(|(i, _)| i)
    }

    pub fn started(&mut self, i: usize) {
        let e = &mut self.list[i];
        e.outstanding += 1;
        e.sent += 1;
    }

    /// The request to `i` is over (whatever its outcome).
    pub fn finished(&mut self, i: usize) {
        let e = &mut self.list[i];
        e.outstanding = e.outstanding.saturating_sub(1);
    }

    /// `i` answered: it is healthy.
    pub fn answered(&mut self, i: usize) {
        let e = &mut self.list[i];
        e.failures = 0;
        e.cool_downs = 0;
        e.cool_until_ms = 0;
    }

    /// `i` failed; `refused` when nothing listens there.
    pub fn failed(&mut self, i: usize, now_ms: u64, refused: bool) -> Failed {
        let e = &mut self.list[i];
        e.failures += 1;
        if e.cool_until_ms > now_ms {
            return Failed::CooledDown {
                until_ms: e.cool_until_ms,
            };
        }
        if !refused && e.failures < FAILURES_BEFORE_COOL_DOWN {
            return Failed::Kept;
        }
        let ms = FIRST_COOL_DOWN_MS
            .saturating_mul(1u64 << e.cool_downs.min(16))
            .min(MAX_COOL_DOWN_MS);
        e.cool_downs += 1;
        e.cool_until_ms = now_ms + ms;
        Failed::CooledDown {
            until_ms: e.cool_until_ms,
        }
    }

    /// True when every endpoint is left out or failing.
    pub fn all_failing(&self) -> bool {
        self.list.iter().all(|e| e.failures > 0)
    }

    pub fn outstanding(&self) -> u32 {
        self.list.iter().map(|e| e.outstanding).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fewest_outstanding_wins_then_fewest_sent() {
        let mut e = Endpoints::new(3);
        let mut picks = vec![];
        for _ in 0..6 {
            let i = e.pick(0).unwrap();
            e.started(i);
            picks.push(i);
        }
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        // Endpoint 1 is fast: its requests come back, so it gets the next ones.
        e.finished(1);
        e.finished(1);
        e.answered(1);
        assert_eq!(e.pick(0), Ok(1));
        e.started(1);
        assert_eq!(e.pick(0), Ok(1));
    }

    #[test]
    fn a_hedge_goes_to_another_usable_endpoint() {
        let mut e = Endpoints::new(3);
        e.started(0);
        e.started(1);
        // The least loaded other than the first.
        assert_eq!(e.pick_other(0, 0), Some(2));
        e.started(2);
        e.started(2);
        assert_eq!(e.pick_other(0, 0), Some(1));
        // Left out or failing with a request out: not a place for a copy.
        e.failed(1, 0, true);
        e.failed(2, 0, false);
        assert_eq!(e.pick_other(0, 0), None);
        // Only one endpoint: nowhere else.
        assert_eq!(Endpoints::new(1).pick_other(0, 0), None);
    }

    #[test]
    fn a_refused_endpoint_cools_down_then_gets_one_probe() {
        let mut e = Endpoints::new(2);
        e.started(0);
        e.finished(0);
        assert_eq!(
            e.failed(0, 100, true),
            Failed::CooledDown { until_ms: 1100 }
        );
        // Everything goes to endpoint 1 meanwhile.
        for _ in 0..5 {
            assert_eq!(e.pick(500), Ok(1));
            e.started(1);
        }
        // Due again: one probe (it has fewer outstanding), not a flood.
        assert_eq!(e.pick(1100), Ok(0));
        e.started(0);
        assert_eq!(e.pick(1100), Ok(1));
        // The probe fails: a longer cool-down.
        e.finished(0);
        assert_eq!(
            e.failed(0, 1200, true),
            Failed::CooledDown { until_ms: 3200 }
        );
        // The next probe answers: back in full use.
        e.started(0);
        e.finished(0);
        e.answered(0);
        assert_eq!(e.pick(3300), Ok(0));
        assert_eq!(e.list[0].cool_downs, 0);
    }

    #[test]
    fn errors_cool_down_after_a_few_in_a_row_doubling_to_a_ceiling() {
        let mut e = Endpoints::new(1);
        // (now, refused) → verdict.
        let table: &[(u64, bool, Failed)] = &[
            (0, false, Failed::Kept),
            (0, false, Failed::Kept),
            (0, false, Failed::CooledDown { until_ms: 1000 }),
            // Failures reported during a cool-down do not extend it.
            (500, false, Failed::CooledDown { until_ms: 1000 }),
            (1000, false, Failed::CooledDown { until_ms: 3000 }),
            (3000, false, Failed::CooledDown { until_ms: 7000 }),
            (7000, true, Failed::CooledDown { until_ms: 15000 }),
            (15000, true, Failed::CooledDown { until_ms: 31000 }),
            (31000, true, Failed::CooledDown { until_ms: 61000 }),
            (61000, true, Failed::CooledDown { until_ms: 91000 }),
        ];
        for (k, &(now, refused, want)) in table.iter().enumerate() {
            assert_eq!(e.failed(0, now, refused), want, "failure {k}");
        }
        assert!(e.all_failing());
        // All left out: the earliest return is the wake-up time.
        assert_eq!(e.pick(61000), Err(Some(91000)));
    }
}
