//! When a request is sent to a second replica: pure, over plain numbers,
//! the clock passed in as milliseconds since the run started.
//!
//! A replica that hangs holds each request sent to it for the whole call
//! timeout (two minutes by default) while the others idle. A request out
//! far longer than its replica's recent answers is sent again to another
//! replica and the first answer wins: the "hedged request" of Dean and
//! Barroso, "The Tail at Scale" (Communications of the ACM 56(2), 2013),
//! which sends the copy once the first has been out longer than the
//! 95th-percentile latency. Here the wait is a multiple of that percentile
//! with a floor, so an LLM's ordinary spread of answer times (a long
//! completion takes many times a short one) sends few copies, each of
//! which may be billed.

use std::collections::VecDeque;

/// A request is sent again after this many times its replica's recent
/// 95th-percentile answer time...
pub const HEDGE_FACTOR: u64 = 4;
/// ...and never before this long.
pub const HEDGE_FLOOR_MS: u64 = 5_000;
/// Answer times kept per replica (the most recent).
const SAMPLES: usize = 64;
/// Answer times a replica needs before its own percentile is trusted;
/// until then the percentile of every replica's answers stands in.
const MIN_SAMPLES: usize = 5;

/// The recent answer times of each replica.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Latencies {
    per: Vec<VecDeque<u64>>,
}

impl Latencies {
    pub fn new(endpoints: usize) -> Latencies {
        Latencies {
            per: vec![VecDeque::new(); endpoints.max(1)],
        }
    }

    /// Replica `i` answered after `ms`.
    pub fn record(&mut self, i: usize, ms: u64) {
        let Some(q) = self.per.get_mut(i) else { return };
        if q.len() == SAMPLES {
            q.pop_front();
        }
        q.push_back(ms);
    }

    /// How long a request to replica `i` may be out before it is hedged;
    /// `None` while no replica has answered enough to know what is usual.
    pub fn hedge_after(&self, i: usize) -> Option<u64> {
        let own = self.per.get(i).filter(|q| q.len() >= MIN_SAMPLES);
        let p95 = match own {
            Some(q) => p95(q.iter().copied()),
            None => {
                let all: Vec<u64> = self.per.iter().flatten().copied().collect();
                if all.len() < MIN_SAMPLES {
                    return None;
                }
                p95(all.into_iter())
            }
        };
        Some(wait_for(p95))
    }
}

/// The wait before a hedge, for a replica whose recent answers took up to
/// `p95_ms` (95 in 100 of them).
pub fn wait_for(p95_ms: u64) -> u64 {
    p95_ms.saturating_mul(HEDGE_FACTOR).max(HEDGE_FLOOR_MS)
}

/// The 95th percentile (nearest rank) of the values.
fn p95(values: impl Iterator<Item = u64>) -> u64 {
    let mut v: Vec<u64> = values.collect();
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    // Nearest rank: the smallest value at or above 95% of them.
    let rank = (v.len() * 95).div_ceil(100).max(1);
    v[rank - 1]
}

/// A request out now, as the hedge decision sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Out {
    /// How long it has been out.
    pub out_ms: u64,
    /// Its replica's wait ([`Latencies::hedge_after`]).
    pub after_ms: Option<u64>,
    /// A copy is already out (a request is hedged once).
    pub hedged: bool,
}

/// Whether to send a copy of a request now: out longer than its
/// replica's wait, not hedged yet, and another replica free to take it.
pub fn should_hedge(out: Out, another_free: bool) -> bool {
    another_free && !out.hedged && out.after_ms.is_some_and(|after| out.out_ms >= after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_waits() {
        // (answer times, p95)
        let cases: &[(&[u64], u64)] = &[
            (&[], 0),
            (&[7], 7),
            (&[1, 2, 3, 4, 5], 5),
            (&[10; 19], 10),
            // One slow answer in twenty is the 95th percentile's edge.
            (
                &[
                    10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 900,
                ],
                10,
            ),
            (
                &[
                    10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 900,
                    900,
                ],
                900,
            ),
        ];
        for (values, want) in cases {
            assert_eq!(p95(values.iter().copied()), *want, "{values:?}");
        }
        // (p95, wait): a multiple, never under the floor, no overflow.
        for (p, want) in [
            (0, HEDGE_FLOOR_MS),
            (100, HEDGE_FLOOR_MS),
            (2_000, 8_000),
            (30_000, 120_000),
            (u64::MAX, u64::MAX),
        ] {
            assert_eq!(wait_for(p), want, "{p}");
        }
    }

    #[test]
    fn a_replica_is_judged_by_its_own_answers_once_it_has_enough() {
        let mut l = Latencies::new(3);
        // Nothing answered yet: no hedge, whatever the wait.
        assert_eq!(l.hedge_after(0), None);
        for _ in 0..3 {
            l.record(0, 2_000);
        }
        assert_eq!(l.hedge_after(1), None);
        for _ in 0..2 {
            l.record(0, 2_000);
        }
        // A replica that never answered (hung) borrows everyone's answers.
        assert_eq!(l.hedge_after(1), Some(8_000));
        // A slow but steady replica is judged by its own.
        for _ in 0..5 {
            l.record(2, 20_000);
        }
        assert_eq!(l.hedge_after(2), Some(80_000));
        assert_eq!(l.hedge_after(0), Some(8_000));
        // Only the most recent answers count.
        for _ in 0..SAMPLES {
            l.record(2, 100);
        }
        assert_eq!(l.hedge_after(2), Some(HEDGE_FLOOR_MS));
        // An endpoint that does not exist is judged by everyone's: 5 of
        // 2 s in 69 answers are more than the slowest 5%.
        l.record(9, 1);
        assert_eq!(l.hedge_after(9), Some(8_000));
    }

    #[test]
    fn when_to_hedge() {
        let out = |out_ms, after_ms, hedged| Out {
            out_ms,
            after_ms,
            hedged,
        };
        // (request, another replica free) → hedge
        let table = [
            (out(4_999, Some(5_000), false), true, false),
            (out(5_000, Some(5_000), false), true, true),
            (out(120_000, Some(5_000), false), true, true),
            // Hedged once already: the first answer of the two wins.
            (out(120_000, Some(5_000), true), true, false),
            // Nowhere else to send it.
            (out(120_000, Some(5_000), false), false, false),
            // Nothing known of what is usual yet.
            (out(120_000, None, false), true, false),
        ];
        for (k, (o, free, want)) in table.into_iter().enumerate() {
            assert_eq!(should_hedge(o, free), want, "case {k}: {o:?}");
        }
    }
}
