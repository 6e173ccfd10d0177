//! How fast direct mode may send: pure decisions over plain numbers, the
//! clock passed in as milliseconds since the run started.
//!
//! Three limits act together:
//! - a window on requests in flight, AIMD-like (as TCP's congestion window):
//!   it starts at `concurrency.max_requests_in_flight`, halves on a 429 (at
//!   most once a second, since a burst of 429s comes from one overshoot),
//!   and grows back by about one request per window of answers;
//! - token buckets for `concurrency.requests_per_minute` and
//!   `tokens_per_minute`, refilled continuously; when the spec sets none and
//!   the server sends `x-ratelimit-limit-*` (OpenAI's rate-limit guide), the
//!   server's limits are used, so a run stays inside the account's limits
//!   without the user computing them;
//! - a pause: until a 429's `retry-after`, or until the server's bucket
//!   has room again when `x-ratelimit-remaining-*` says it is empty (its
//!   `reset` is the time to a *full* bucket, so the wait for one request is
//!   derived from the limit instead).

use crate::provider::direct::RateHeaders;

/// Without a `retry-after`, a 429 pauses sending this long.
pub const DEFAULT_429_PAUSE_MS: u64 = 1000;
/// The window is cut at most this often.
const CUT_EVERY_MS: u64 = 1000;
/// A bucket holds at most this many seconds of its rate (the burst).
const BURST_SECS: f64 = 1.0;

#[derive(Debug, Clone, Copy, PartialEq)]
struct Bucket {
    per_minute: f64,
    level: f64,
    at_ms: u64,
}

impl Bucket {
    fn new(per_minute: u64, now_ms: u64) -> Bucket {
        let mut b = Bucket {
            per_minute: per_minute as f64,
            level: 0.0,
            at_ms: now_ms,
        };
        b.level = b.capacity();
        b
    }

    fn capacity(&self) -> f64 {
        (self.per_minute / 60.0 * BURST_SECS).max(1.0)
    }

    fn refill(&mut self, now_ms: u64) {
        let dt = now_ms.saturating_sub(self.at_ms) as f64;
        self.level = (self.level + dt * self.per_minute / 60_000.0).min(self.capacity());
        self.at_ms = self.at_ms.max(now_ms);
    }

    /// When `need` units would be there (`now` if they are). A cost larger
    /// than the whole bucket starts once the bucket is full, and leaves it in
    /// debt, so one large request is never blocked for ever.
    fn ready_at(&self, need: f64, now_ms: u64) -> u64 {
        let need = need.min(self.capacity());
        if self.level >= need {
            return now_ms;
        }
        let ms = (need - self.level) * 60_000.0 / self.per_minute;
        now_ms + ms.ceil() as u64
    }

    fn set_rate(&mut self, per_minute: u64, now_ms: u64) {
        self.refill(now_ms);
        self.per_minute = per_minute as f64;
        self.level = self.level.min(self.capacity());
    }
}

/// What the spec asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PaceConfig {
    pub max_in_flight: u32,
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Pace {
    cfg: PaceConfig,
    window: f64,
    last_cut_ms: Option<u64>,
    paused_until_ms: u64,
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
    /// How often the window was cut (for the status line).
    pub cuts: u64,
}

impl Pace {
    pub fn new(cfg: PaceConfig, now_ms: u64) -> Pace {
        Pace {
            cfg,
            window: f64::from(cfg.max_in_flight.max(1)),
            last_cut_ms: None,
            paused_until_ms: 0,
            requests: cfg.requests_per_minute.map(|r| Bucket::new(r, now_ms)),
            tokens: cfg.tokens_per_minute.map(|t| Bucket::new(t, now_ms)),
            cuts: 0,
        }
    }

    /// Requests that may be in flight now.
    pub fn window(&self) -> u32 {
        (self.window.floor() as u32).clamp(1, self.cfg.max_in_flight.max(1))
    }

    /// Whether a request of `tokens` may start now: `Ok`, or the time to
    /// ask again. On `Ok` the buckets are charged.
    pub fn start(&mut self, now_ms: u64, tokens: u64) -> Result<(), u64> {
        if now_ms < self.paused_until_ms {
            return Err(self.paused_until_ms);
        }
        let mut ready = now_ms;
        if let Some(b) = self.requests.as_mut() {
            b.refill(now_ms);
            ready = ready.max(b.ready_at(1.0, now_ms));
        }
        if let Some(b) = self.tokens.as_mut() {
            b.refill(now_ms);
            ready = ready.max(b.ready_at(tokens as f64, now_ms));
        }
        if ready > now_ms {
            return Err(ready);
        }
        if let Some(b) = self.requests.as_mut() {
            b.level -= 1.0;
        }
        if let Some(b) = self.tokens.as_mut() {
            b.level -= tokens as f64;
        }
        Ok(())
    }

    /// An answer that was not a 429: the window grows by 1/window.
    pub fn on_answer(&mut self) {
        let max = f64::from(self.cfg.max_in_flight.max(1));
        self.window = (self.window + 1.0 / self.window.max(1.0)).min(max);
    }

    /// A 429: halve the window (once a second at most) and pause sending
    /// for the server's `retry-after`, or a second.
    pub fn on_rate_limited(&mut self, now_ms: u64, retry_after_ms: Option<u64>) {
        if self
            .last_cut_ms
            .is_none_or(|t| now_ms.saturating_sub(t) >= CUT_EVERY_MS)
        {
            self.window = (self.window / 2.0).max(1.0);
            self.last_cut_ms = Some(now_ms);
            self.cuts += 1;
        }
        let pause = retry_after_ms.unwrap_or(DEFAULT_429_PAUSE_MS);
        self.paused_until_ms = self.paused_until_ms.max(now_ms + pause);
    }

    /// Follow the server's `x-ratelimit-*` headers. `next_tokens` is the
    /// size of a typical request, to tell whether the token bucket has room.
    pub fn on_headers(&mut self, now_ms: u64, h: &RateHeaders, next_tokens: u64) {
        if self.cfg.requests_per_minute.is_none()
            && let Some(limit) = h.limit_requests
        {
            match self.requests.as_mut() {
                Some(b) => b.set_rate(limit, now_ms),
                None => self.requests = Some(Bucket::new(limit, now_ms)),
            }
        }
        if self.cfg.tokens_per_minute.is_none()
            && let Some(limit) = h.limit_tokens
        {
            match self.tokens.as_mut() {
                Some(b) => b.set_rate(limit, now_ms),
                None => self.tokens = Some(Bucket::new(limit, now_ms)),
            }
        }
        // An empty server bucket: wait until it holds one more request (or
        // the tokens of one), not until it is full again.
        if h.remaining_requests == Some(0) {
            let wait = match (h.limit_requests, h.reset_requests) {
                (Some(limit), _) => 60_000 / limit.max(1),
                (None, Some(reset)) => (reset.as_millis() as u64).min(DEFAULT_429_PAUSE_MS),
                (None, None) => DEFAULT_429_PAUSE_MS,
            };
            self.paused_until_ms = self.paused_until_ms.max(now_ms + wait.max(1));
        }
        if let Some(left) = h.remaining_tokens
            && left < next_tokens
        {
            let missing = next_tokens - left;
            let wait = match (h.limit_tokens, h.reset_tokens) {
                (Some(limit), _) => missing.saturating_mul(60_000) / limit.max(1),
                (None, Some(reset)) => (reset.as_millis() as u64).min(DEFAULT_429_PAUSE_MS),
                (None, None) => DEFAULT_429_PAUSE_MS,
            };
            self.paused_until_ms = self.paused_until_ms.max(now_ms + wait.max(1));
        }
    }

    /// Until when sending is paused (ms since the start), if it is.
    pub fn paused_until(&self, now_ms: u64) -> Option<u64> {
        (self.paused_until_ms > now_ms).then_some(self.paused_until_ms)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn cfg(max: u32, rpm: Option<u64>, tpm: Option<u64>) -> PaceConfig {
        PaceConfig {
            max_in_flight: max,
            requests_per_minute: rpm,
            tokens_per_minute: tpm,
        }
    }

    #[test]
    fn the_window_halves_on_429_once_a_second_and_grows_back() {
        let mut p = Pace::new(cfg(64, None, None), 0);
        assert_eq!(p.window(), 64);
        // (time, event) → window after it.
        let table: &[(u64, &str, u32)] = &[
            (10, "429", 32),
            (20, "429", 32), // same overshoot: not cut again
            (1010, "429", 16),
            (2010, "429", 8),
            (3010, "429", 4),
            (4010, "429", 2),
            (5010, "429", 1),
            (6010, "429", 1), // never below one
        ];
        for &(t, _, want) in table {
            p.on_rate_limited(t, Some(5));
            assert_eq!(p.window(), want, "after a 429 at {t} ms");
        }
        // About one more request in flight per window of answers.
        let mut answers = 0;
        while p.window() < 8 {
            p.on_answer();
            answers += 1;
        }
        assert!(
            (20..=40).contains(&answers),
            "{answers} answers to grow 1 → 8"
        );
        for _ in 0..10_000 {
            p.on_answer();
        }
        assert_eq!(p.window(), 64, "never above the configured cap");
    }

    #[test]
    fn a_429_pauses_for_its_retry_after_or_a_second() {
        let mut p = Pace::new(cfg(4, None, None), 0);
        p.on_rate_limited(100, Some(250));
        assert_eq!(p.start(200, 1), Err(350));
        assert_eq!(p.start(350, 1), Ok(()));
        p.on_rate_limited(2000, None);
        assert_eq!(p.start(2500, 1), Err(3000));
        // A shorter later pause never shortens a longer one.
        p.on_rate_limited(2600, Some(10));
        assert_eq!(p.paused_until(2700), Some(3000));
    }

    #[test]
    fn requests_per_minute_are_spread_over_the_minute() {
        // 120/min: a burst of 2 (one second's worth), then one each 500 ms.
        let mut p = Pace::new(cfg(64, Some(120), None), 0);
        let mut started = vec![];
        let mut now = 0;
        while started.len() < 6 {
            match p.start(now, 1) {
                Ok(()) => started.push(now),
                Err(at) => now = at,
            }
        }
        assert_eq!(started, [0, 0, 500, 1000, 1500, 2000]);
    }

    #[test]
    fn tokens_per_minute_let_a_large_request_through_once_full() {
        // 6,000 tokens/min = 100 per second, bucket of 100.
        let mut p = Pace::new(cfg(64, None, Some(6000)), 0);
        assert_eq!(p.start(0, 60), Ok(()));
        // 40 left: 60 more need 200 ms.
        assert_eq!(p.start(0, 60), Err(200));
        assert_eq!(p.start(200, 60), Ok(()));
        // Larger than the bucket: waits for a full bucket, then goes (debt).
        assert_eq!(p.start(200, 500), Err(1200));
        assert_eq!(p.start(1200, 500), Ok(()));
        assert!(p.start(1200, 1).is_err(), "in debt after the large one");
    }

    #[test]
    fn server_headers_set_the_limits_and_pause_when_empty() {
        let h = |lr, rr, reset_r: Option<u64>, lt, rt| RateHeaders {
            limit_requests: lr,
            remaining_requests: rr,
            reset_requests: reset_r.map(Duration::from_millis),
            limit_tokens: lt,
            remaining_tokens: rt,
            reset_tokens: None,
        };
        // (headers, next request's tokens) → paused until.
        let table: &[(RateHeaders, u64, Option<u64>)] = &[
            (h(Some(6000), Some(10), None, None, None), 10, None),
            // Empty: one request's worth of the limit (60 s / 6000 = 10 ms).
            (
                h(Some(6000), Some(0), Some(60_000), None, None),
                10,
                Some(1010),
            ),
            // No limit known: the reset, at most a second.
            (h(None, Some(0), Some(300), None, None), 10, Some(1300)),
            (h(None, Some(0), Some(9_000), None, None), 10, Some(2000)),
            // Tokens: 100 missing at 60,000/min = 100 ms.
            (h(None, None, None, Some(60_000), Some(50)), 150, Some(1100)),
            (h(None, None, None, Some(60_000), Some(500)), 150, None),
        ];
        for (i, (headers, next, want)) in table.iter().enumerate() {
            let mut p = Pace::new(cfg(8, None, None), 0);
            p.on_headers(1000, headers, *next);
            assert_eq!(p.paused_until(1000), *want, "case {i}");
        }
        // A limit the server announces paces the client (no spec limit).
        let mut p = Pace::new(cfg(64, None, None), 0);
        p.on_headers(0, &h(Some(60), Some(59), None, None, None), 1);
        assert_eq!(p.start(0, 1), Ok(()));
        assert_eq!(p.start(0, 1), Err(1000));
        // The spec's own limit wins over the server's.
        let mut p = Pace::new(cfg(64, Some(600), None), 0);
        p.on_headers(0, &h(Some(60), Some(59), None, None, None), 1);
        let mut n = 0;
        while p.start(0, 1).is_ok() {
            n += 1;
        }
        assert_eq!(n, 10, "a second of 600/min");
    }
}
