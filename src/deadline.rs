//! `deadline:` and `deadline_margin:`: a job that must be done by a time.
//! Pure: text and Unix seconds in, decisions out.
//!
//! The deadline is an RFC 3339 time (`2026-12-09T06:00:00Z`, or with an
//! offset, `2026-12-09T07:00:00+01:00`; RFC 3339 §5.6) or a duration
//! counted from the job's first `apply` (`6h`). When the time left falls
//! under the margin, the batches still out are cancelled (what they finished
//! is collected: it was paid) and the rows still without an answer go to the
//! direct lane at standard prices. The margin defaults to 15% of the time
//! left at the first apply, kept between 1 and 30 minutes: time enough for
//! the cancels to land and the direct lane to answer the rest.

use std::time::Duration;

/// The default margin's share of the time left at the first apply, and its bounds.
pub const MARGIN_SHARE: f64 = 0.15;
pub const MARGIN_MIN_SECS: u64 = 60;
pub const MARGIN_MAX_SECS: u64 = 30 * 60;

/// What the spec says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// A moment (Unix seconds).
    At(u64),
    /// A duration from the first `apply`.
    After(Duration),
}

/// A deadline fixed at the job's first `apply`: when, and the margin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Deadline {
    /// Unix seconds.
    pub at: u64,
    pub margin_secs: u64,
}

impl Deadline {
    /// When the batches give way to the direct lane (Unix seconds).
    pub fn switch_at(&self) -> u64 {
        self.at.saturating_sub(self.margin_secs)
    }

    /// The time left has fallen under the margin.
    pub fn due(&self, now: u64) -> bool {
        now >= self.switch_at()
    }
}

/// Read `deadline:`.
pub fn parse(text: &str) -> Result<When, String> {
    let t = text.trim();
    if let Some(at) = parse_rfc3339(t) {
        return at.map(When::At);
    }
    match humantime::parse_duration(t) {
        Ok(d) if d.as_secs() > 0 => Ok(When::After(d)),
        Ok(_) => Err(format!("`{text}` is no time at all; write e.g. 6h")),
        Err(_) => Err(format!(
            "`{text}` is neither an RFC 3339 time (e.g. 2026-12-09T06:00:00Z or 2026-12-09T07:00:00+01:00) nor a duration from the first apply (e.g. 6h, 90m)"
        )),
    }
}

/// Read `deadline_margin:`.
pub fn parse_margin(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text.trim()) {
        Ok(d) if d.as_secs() > 0 => Ok(d),
        Ok(_) => Err(format!(
            "`{text}` is no time at all; write e.g. 10m (at least 1s)"
        )),
        Err(e) => Err(format!(
            "`{text}` is not a duration ({e}); write e.g. 10m or 30m"
        )),
    }
}

/// Fix the deadline at the first `apply` (`now`, Unix seconds).
pub fn resolve(when: When, margin: Option<Duration>, now: u64) -> Deadline {
    let at = match when {
        When::At(t) => t,
        When::After(d) => now.saturating_add(d.as_secs()),
    };
    let margin_secs = match margin {
        Some(m) => m.as_secs(),
        None => {
            let left = at.saturating_sub(now) as f64;
            ((left * MARGIN_SHARE).round() as u64).clamp(MARGIN_MIN_SECS, MARGIN_MAX_SECS)
        }
    };
    Deadline { at, margin_secs }
}

/// The direct fallback's budget: `None` when it may go, else why not. `spent`
/// is the job's spend so far; `bound` the most the rows left can cost at
/// standard prices (`None`: no upper bound, the request sets no output cap).
pub fn fallback_refused(max_cost: Option<f64>, spent: f64, bound: Option<f64>) -> Option<String> {
    let budget = max_cost?;
    match bound {
        None => Some(format!(
            "the direct lane has no cost bound (the request sets no max_tokens) and halt.max_cost_usd is {}",
            crate::cost::usd(budget)
        )),
        Some(b) if spent + b > budget => Some(format!(
            "sending the rows left in the direct lane could cost up to {} at standard prices; with {} spent, that is above halt.max_cost_usd {}",
            crate::cost::usd(b),
            crate::cost::usd(spent),
            crate::cost::usd(budget)
        )),
        Some(_) => None,
    }
}

/// Unix seconds of an RFC 3339 `date-time`; `None` when the text does not
/// look like one at all (a duration, say), `Some(Err)` when it does but is
/// wrong.
fn parse_rfc3339(t: &str) -> Option<Result<u64, String>> {
    let b = t.as_bytes();
    // `YYYY-MM-DD` then `T`, `t` or a space.
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let bad = |why: &str| Some(Err(format!("`{t}` is not an RFC 3339 time: {why}")));
    let num = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit())).then(|| s.parse().ok())?
    };
    let (Some(year), Some(month), Some(day)) = (num(&t[0..4]), num(&t[5..7]), num(&t[8..10]))
    else {
        return bad("the date is not YYYY-MM-DD");
    };
    if b[13] != b':' || b[16] != b':' {
        return bad("the time is not HH:MM:SS");
    }
    let (Some(hour), Some(min), Some(sec)) = (num(&t[11..13]), num(&t[14..16]), num(&t[17..19]))
    else {
        return bad("the time is not HH:MM:SS");
    };
    let mut rest = &t[19..];
    // Fractions of a second are allowed and dropped.
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return bad("a `.` with no digits after the seconds");
        }
        rest = &frac[digits..];
    }
    let offset: i64 = match rest {
        "Z" | "z" => 0,
        "" => return bad("it has no time zone; end it with Z (UTC) or an offset such as +01:00"),
        _ => {
            let ob = rest.as_bytes();
            let sign = match ob[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return bad("the time zone is not Z or ±HH:MM"),
            };
            if rest.len() != 6 || ob[3] != b':' {
                return bad("the time zone is not Z or ±HH:MM");
            }
            let (Some(oh), Some(om)) = (num(&rest[1..3]), num(&rest[4..6])) else {
                return bad("the time zone is not Z or ±HH:MM");
            };
            if oh > 23 || om > 59 {
                return bad("the offset is out of range");
            }
            sign * (oh * 3600 + om * 60) as i64
        }
    };
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&month) || day == 0 || day > days_in[month as usize - 1] {
        return bad("no such date");
    }
    // RFC 3339 allows second 60 (a leap second); it is taken as the next second.
    if hour > 23 || min > 59 || sec > 60 {
        return bad("no such time of day");
    }
    if year < 1970 {
        return bad("before 1970");
    }
    let days = days_from_civil(year as i64, month as i64, day as i64);
    let secs = days * 86_400 + (hour * 3600 + min * 60 + sec) as i64 - offset;
    Some(u64::try_from(secs).map_err(|_| format!("`{t}` is before 1970")))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant,
/// "chrono-Compatible Low-Level Date Algorithms", `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_durations_are_read() {
        // (text, what it is)
        let cases: &[(&str, Result<When, &str>)] = &[
            ("1970-01-01T00:00:00Z", Ok(When::At(0))),
            ("2026-12-09T06:00:00Z", Ok(When::At(1_796_796_000))),
            ("2026-12-09t06:00:00z", Ok(When::At(1_796_796_000))),
            ("2026-12-09 06:00:00Z", Ok(When::At(1_796_796_000))),
            ("2026-12-09T07:00:00+01:00", Ok(When::At(1_796_796_000))),
            ("2026-12-09T01:30:00-04:30", Ok(When::At(1_796_796_000))),
            ("2026-12-09T06:00:00.250Z", Ok(When::At(1_796_796_000))),
            ("2024-02-29T00:00:00Z", Ok(When::At(1_709_164_800))),
            ("6h", Ok(When::After(Duration::from_secs(6 * 3600)))),
            ("1h 30m", Ok(When::After(Duration::from_secs(5400)))),
            ("2026-12-09T06:00:00", Err("no time zone")),
            ("2026-02-30T06:00:00Z", Err("no such date")),
            ("2025-02-29T06:00:00Z", Err("no such date")),
            ("2026-12-09T24:00:00Z", Err("no such time")),
            ("2026-12-09T06:00:00+1:00", Err("not Z or")),
            ("2026-12-09T06:00:00.Z", Err("no digits")),
            ("2026-1a-09T06:00:00Z", Err("not YYYY-MM-DD")),
            ("0s", Err("no time at all")),
            ("tomorrow", Err("neither an RFC 3339 time")),
        ];
        for (text, want) in cases {
            match (parse(text), want) {
                (Ok(got), Ok(w)) => assert_eq!(got, *w, "{text}"),
                (Err(e), Err(w)) => assert!(e.contains(w), "{text}: {e}"),
                (got, w) => panic!("{text}: {got:?}, expected {w:?}"),
            }
        }
    }

    #[test]
    fn the_margin_is_15_percent_of_the_time_left_within_1_and_30_minutes() {
        let now = 1_000_000;
        let h = |n: u64| Duration::from_secs(n * 3600);
        // (deadline, margin given, expected margin in seconds)
        let cases = [
            (When::After(h(1)), None, 540),
            (When::After(h(6)), None, 1800),
            (When::After(Duration::from_secs(120)), None, 60),
            (When::At(now + 2000), None, 300),
            // Already past: the smallest margin (the switch is due at once).
            (When::At(now - 10), None, 60),
            (When::After(h(6)), Some(Duration::from_secs(7)), 7),
        ];
        for (when, margin, want) in cases {
            let d = resolve(when, margin, now);
            assert_eq!(d.margin_secs, want, "{when:?}");
        }
        let d = resolve(When::After(h(1)), None, now);
        assert_eq!(d.at, now + 3600);
        assert_eq!(d.switch_at(), now + 3600 - 540);
        assert!(!d.due(now + 3600 - 541));
        assert!(d.due(now + 3600 - 540));
        assert!(d.due(now + 10 * 3600));
    }

    #[test]
    fn margins_are_durations() {
        assert_eq!(parse_margin("10m"), Ok(Duration::from_secs(600)));
        assert!(parse_margin("0s").unwrap_err().contains("no time"));
        assert!(parse_margin("soon").unwrap_err().contains("not a duration"));
    }

    #[test]
    fn the_fallback_stays_within_the_budget() {
        // (budget, spent, bound, refused)
        let cases = [
            (None, 5.0, None, false),
            (None, 5.0, Some(100.0), false),
            (Some(10.0), 5.0, Some(4.0), false),
            (Some(10.0), 5.0, Some(5.0), false),
            (Some(10.0), 5.0, Some(5.01), true),
            (Some(10.0), 0.0, None, true),
        ];
        for (budget, spent, bound, refused) in cases {
            assert_eq!(
                fallback_refused(budget, spent, bound).is_some(),
                refused,
                "{budget:?} {spent} {bound:?}"
            );
        }
    }
}
