//! Packing requests into chunks (one chunk becomes one provider batch).
//!
//! A pure function over per-request sizes: no I/O, so every limit case is
//! tested with tables. Requests keep their order; a chunk is a contiguous
//! range of the outstanding requests.

use crate::provider::BatchLimits;

/// Size of one request: prompt tokens and bytes of its JSONL line, newline included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Item {
    pub tokens: u64,
    pub bytes: u64,
}

/// Limits per chunk after the provider ceilings were applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_requests: u64,
    pub max_bytes: u64,
    pub max_tokens: Option<u64>,
    pub forced_chunks: Option<u64>,
}

impl Limits {
    /// Clamp what the spec asks for to the provider's ceilings (what one
    /// batch may hold there); the warnings say what was lowered.
    pub fn from_spec(
        ceiling: BatchLimits,
        max_requests: Option<u64>,
        max_bytes: Option<u64>,
        max_tokens: Option<u64>,
        chunks: Option<u32>,
    ) -> (Limits, Vec<String>) {
        let mut warnings = Vec::new();
        let BatchLimits {
            max_requests: ceiling_requests,
            max_bytes: ceiling_bytes,
        } = ceiling;
        let max_requests = match max_requests {
            Some(n) if n > ceiling_requests => {
                warnings.push(format!(
                    "chunking.max_requests {n} is above the provider limit; using {ceiling_requests}"
                ));
                ceiling_requests
            }
            Some(n) => n,
            None => ceiling_requests,
        };
        let max_bytes = match max_bytes {
            Some(n) if n > ceiling_bytes => {
                warnings.push(format!(
                    "chunking.max_bytes {n} is above the provider limit; using {ceiling_bytes} bytes"
                ));
                ceiling_bytes
            }
            Some(n) => n,
            None => ceiling_bytes,
        };
        (
            Limits {
                max_requests,
                max_bytes,
                max_tokens,
                forced_chunks: chunks.map(u64::from),
            },
            warnings,
        )
    }
}

/// A contiguous range of requests and its totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Span {
    pub start: usize,
    pub end: usize,
    pub tokens: u64,
    pub bytes: u64,
}

impl Span {
    pub fn requests(&self) -> usize {
        self.end - self.start
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// One request alone is over a limit; `index` is its position in the input to `pack`.
    #[error("request {index} is {value} {unit}, over the chunk limit of {limit} {unit}")]
    TooLarge {
        index: usize,
        unit: &'static str,
        value: u64,
        limit: u64,
    },
    /// Same, after the planner named the row.
    #[error(
        "{place}: the request for this row is {value} {unit}, over the chunk limit of {limit} {unit}"
    )]
    RowTooLarge {
        place: String,
        unit: &'static str,
        value: u64,
        limit: u64,
    },
}

impl ChunkError {
    pub fn hint(&self) -> Option<String> {
        Some(
            "shorten the row or the prompt, or raise `chunking.max_bytes` / `chunking.max_tokens` (the provider ceiling is 200 MB)"
                .into(),
        )
    }
}

/// The result of packing: the chunks, and a note when the forced count could not be kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packing {
    pub spans: Vec<Span>,
    pub warning: Option<String>,
}

/// Pack requests into chunks under every limit.
///
/// Without a forced count, chunks are filled greedily in order. With
/// `forced_chunks: N`, requests are first cut into N groups of near-equal
/// count, and a group that would break a limit is cut again (the warning
/// says so): the limits always win over the forced count.
pub fn pack(items: &[Item], limits: &Limits) -> Result<Packing, ChunkError> {
    for (index, item) in items.iter().enumerate() {
        check_item(item, index, limits)?;
    }
    let mut spans = Vec::new();
    let mut warning = None;
    match limits.forced_chunks {
        None => greedy(items, 0, items.len(), limits, &mut spans),
        Some(n) => {
            let n = n.max(1) as usize;
            let total = items.len();
            let groups = n.min(total.max(1));
            let (base, extra) = (total / groups, total % groups);
            let mut start = 0;
            for g in 0..groups {
                let len = base + usize::from(g < extra);
                greedy(items, start, start + len, limits, &mut spans);
                start += len;
            }
            if spans.len() != n && total > 0 {
                warning = Some(if spans.len() > n {
                    format!(
                        "chunking.chunks asks for {n} chunks, but the size limits need {}",
                        spans.len()
                    )
                } else {
                    format!(
                        "chunking.chunks asks for {n} chunks, but there are only {total} requests"
                    )
                });
            }
        }
    }
    Ok(Packing { spans, warning })
}

/// A request that is over a limit on its own can never be chunked.
pub fn check_item(item: &Item, index: usize, limits: &Limits) -> Result<(), ChunkError> {
    if item.bytes > limits.max_bytes {
        return Err(ChunkError::TooLarge {
            index,
            unit: "bytes",
            value: item.bytes,
            limit: limits.max_bytes,
        });
    }
    match limits.max_tokens {
        Some(max) if item.tokens > max => Err(ChunkError::TooLarge {
            index,
            unit: "tokens",
            value: item.tokens,
            limit: max,
        }),
        _ => Ok(()),
    }
}

fn greedy(items: &[Item], from: usize, to: usize, limits: &Limits, out: &mut Vec<Span>) {
    let mut packer = Packer::new(*limits, from);
    for item in &items[from..to] {
        out.extend(packer.push(*item));
    }
    out.extend(packer.finish());
}

/// Greedy packing one request at a time, for callers that stream
/// (`split`). `pack` uses the same rule.
#[derive(Debug)]
pub struct Packer {
    limits: Limits,
    cur: Span,
}

impl Packer {
    pub fn new(limits: Limits, start: usize) -> Packer {
        Packer {
            limits,
            cur: Span {
                start,
                end: start,
                tokens: 0,
                bytes: 0,
            },
        }
    }

    /// Add the next request; returns the chunk it closed, if it did not fit.
    pub fn push(&mut self, item: Item) -> Option<Span> {
        let l = &self.limits;
        let c = &self.cur;
        let fits = (c.requests() as u64) < l.max_requests
            && c.bytes + item.bytes <= l.max_bytes
            && l.max_tokens.is_none_or(|m| c.tokens + item.tokens <= m);
        let closed = if !fits && c.requests() > 0 {
            let done = self.cur;
            self.cur = Span {
                start: done.end,
                end: done.end,
                tokens: 0,
                bytes: 0,
            };
            Some(done)
        } else {
            None
        };
        self.cur.end += 1;
        self.cur.tokens += item.tokens;
        self.cur.bytes += item.bytes;
        closed
    }

    /// The last, partly filled chunk (taken: a second call returns `None`).
    pub fn finish(&mut self) -> Option<Span> {
        let end = self.cur.end;
        let last = std::mem::replace(
            &mut self.cur,
            Span {
                start: end,
                end,
                tokens: 0,
                bytes: 0,
            },
        );
        (last.requests() > 0).then_some(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(n: usize, tokens: u64, bytes: u64) -> Vec<Item> {
        vec![Item { tokens, bytes }; n]
    }

    fn limits(
        max_requests: u64,
        max_bytes: u64,
        max_tokens: Option<u64>,
        forced: Option<u64>,
    ) -> Limits {
        Limits {
            max_requests,
            max_bytes,
            max_tokens,
            forced_chunks: forced,
        }
    }

    fn sizes(p: &Packing) -> Vec<usize> {
        p.spans.iter().map(Span::requests).collect()
    }

    #[test]
    fn table() {
        // (requests, tokens each, bytes each, limits, expected chunk sizes)
        let cases: Vec<(usize, u64, u64, Limits, Vec<usize>)> = vec![
            (0, 1, 1, limits(10, 100, None, None), vec![]),
            (5, 1, 1, limits(10, 100, None, None), vec![5]),
            (25, 1, 1, limits(10, 1000, None, None), vec![10, 10, 5]),
            (10, 1, 30, limits(100, 100, None, None), vec![3, 3, 3, 1]),
            (
                10,
                40,
                1,
                limits(100, 1000, Some(100), None),
                vec![2, 2, 2, 2, 2],
            ),
            (10, 1, 1, limits(100, 1000, None, Some(3)), vec![4, 3, 3]),
            (10, 1, 1, limits(100, 1000, None, Some(1)), vec![10]),
            // The forced count gives way to the limits.
            (
                10,
                1,
                1,
                limits(2, 1000, None, Some(2)),
                vec![2, 2, 1, 2, 2, 1],
            ),
            // More chunks asked for than requests.
            (3, 1, 1, limits(100, 1000, None, Some(5)), vec![1, 1, 1]),
        ];
        for (n, t, b, l, want) in cases {
            let got = pack(&items(n, t, b), &l).unwrap();
            assert_eq!(sizes(&got), want, "{n} requests, {l:?}");
            // Spans are contiguous and cover every request once.
            let mut next = 0;
            for s in &got.spans {
                assert_eq!(s.start, next);
                next = s.end;
            }
            assert_eq!(next, n);
        }
    }

    #[test]
    fn forced_warnings() {
        let p = pack(&items(10, 1, 1), &limits(2, 1000, None, Some(2))).unwrap();
        assert!(p.warning.unwrap().contains("need 6"));
        let p = pack(&items(3, 1, 1), &limits(100, 1000, None, Some(5))).unwrap();
        assert!(p.warning.unwrap().contains("only 3"));
        let p = pack(&items(10, 1, 1), &limits(100, 1000, None, Some(3))).unwrap();
        assert_eq!(p.warning, None);
    }

    const OPENAI: BatchLimits = crate::provider::openai::LIMITS;

    #[test]
    fn provider_ceilings_are_never_exceeded() {
        // The spec asks for more than the provider allows; the clamp holds.
        let (l, warnings) = Limits::from_spec(OPENAI, Some(80_000), Some(500_000_000), None, None);
        assert_eq!(l.max_requests, 50_000);
        assert_eq!(l.max_bytes, 200_000_000);
        assert_eq!(warnings.len(), 2);
        let many = items(120_001, 10, 100);
        let p = pack(&many, &l).unwrap();
        assert_eq!(sizes(&p), vec![50_000, 50_000, 20_001]);
        let big = items(2_100, 10, 190_000);
        let p = pack(&big, &l).unwrap();
        for s in &p.spans {
            assert!(s.bytes <= 200_000_000, "{s:?}");
        }
        assert_eq!(p.spans.len(), 2);
        // A forced single chunk still cannot exceed 50,000 requests.
        let (l, _) = Limits::from_spec(OPENAI, None, None, None, Some(1));
        let p = pack(&items(50_001, 1, 1), &l).unwrap();
        assert_eq!(sizes(&p), vec![50_000, 1]);
        // Defaults are the ceilings.
        let (l, w) = Limits::from_spec(OPENAI, None, None, None, None);
        assert_eq!((l.max_requests, l.max_bytes), (50_000, 200_000_000));
        assert!(w.is_empty());
    }

    #[test]
    fn single_request_over_a_limit_is_named() {
        let mut v = items(5, 1, 10);
        v[3].bytes = 500;
        assert_eq!(
            pack(&v, &limits(100, 100, None, None)).unwrap_err(),
            ChunkError::TooLarge {
                index: 3,
                unit: "bytes",
                value: 500,
                limit: 100
            }
        );
        v[3].bytes = 10;
        v[1].tokens = 99;
        assert!(matches!(
            pack(&v, &limits(100, 100, Some(50), None)).unwrap_err(),
            ChunkError::TooLarge {
                index: 1,
                unit: "tokens",
                ..
            }
        ));
    }
}
