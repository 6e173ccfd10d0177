//! `tokens`: per-row token statistics (the old count-tokens mode).

use serde::Serialize;

/// Summary of per-row token counts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenStats {
    pub rows: u64,
    pub total: u64,
    pub mean: f64,
    pub p50: u64,
    pub p95: u64,
    pub max: u64,
    /// Row key (id or row number) of the longest row.
    pub max_row: Option<String>,
    pub limit: Option<u64>,
    /// Rows with more tokens than `limit`.
    pub over_limit: u64,
}

/// Nearest-rank percentile of sorted counts.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Pure summary over the counts, in row order.
pub fn summarize(counts: &[u64], keys: impl Fn(usize) -> String, limit: Option<u64>) -> TokenStats {
    let total: u64 = counts.iter().sum();
    let (max_i, max) = counts
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(&a.0)))
        .map_or((None, 0), |(i, m)| (Some(i), *m));
    let mut sorted = counts.to_vec();
    sorted.sort_unstable();
    TokenStats {
        rows: counts.len() as u64,
        total,
        mean: if counts.is_empty() {
            0.0
        } else {
            total as f64 / counts.len() as f64
        },
        p50: percentile(&sorted, 50.0),
        p95: percentile(&sorted, 95.0),
        max,
        max_row: max_i.map(keys),
        limit,
        over_limit: limit.map_or(0, |l| counts.iter().filter(|c| **c > l).count() as u64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_table() {
        let s = summarize(&[5, 1, 9, 3, 9], |i| format!("r{}", i + 1), Some(4));
        assert_eq!(s.rows, 5);
        assert_eq!(s.total, 27);
        assert!((s.mean - 5.4).abs() < 1e-9);
        assert_eq!(s.p50, 5);
        assert_eq!(s.p95, 9);
        assert_eq!(s.max, 9);
        // The first of equal maxima is named.
        assert_eq!(s.max_row.as_deref(), Some("r3"));
        assert_eq!(s.over_limit, 3);
        let e = summarize(&[], |i| i.to_string(), None);
        assert_eq!((e.rows, e.p50, e.max, e.max_row), (0, 0, 0, None));
        let one: Vec<u64> = (1..=100).collect();
        let s = summarize(&one, |i| i.to_string(), None);
        assert_eq!((s.p50, s.p95, s.over_limit), (50, 95, 0));
    }
}
