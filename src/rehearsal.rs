//! `apply SPEC --sample N`: which rows a rehearsal grades, and what the
//! rest of the job would cost by the sample's real token counts. Pure: rows
//! and numbers in, rows and numbers out (the command in
//! `commands/rehearse.rs` reads the state and runs the direct lane).
//!
//! The sample is deterministic for a seed: every row gets a pseudo-random
//! key from `(seed, row number)`, and each group's rows are taken by
//! smallest key. Row numbers do not change when the job is planned again,
//! so the same seed picks the same rows of the same file.
//!
//! Rows with gold values come first, because only they say whether the
//! judge agrees with the user: stratified by gold value (each value gets at
//! least min(its rows, [`PER_GOLD_VALUE`])), then more gold rows, then the
//! rest of the file. This is stratified sampling with a floor per stratum, as
//! used to keep rare classes represented in a small evaluation set (Cochran,
//! *Sampling Techniques*, 3rd ed., 1977, ch. 5).

use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

/// Each gold value gets at least this many rows (or all it has).
pub const PER_GOLD_VALUE: usize = 5;

/// One row of the job: its number, and its gold values joined into one
/// stratum (`None`: no gold value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub row: u64,
    pub gold: Option<String>,
}

/// A pseudo-random key for a row: the SplitMix64 finaliser (Steele, Lea and
/// Flood, "Fast splittable pseudorandom number generators", OOPSLA 2014)
/// over the seed and the row number.
pub fn key(seed: u64, row: u64) -> u64 {
    let mut z = seed
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(row)
        .wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The `n` smallest keys of a stream, kept in a bounded heap: memory is
/// O(n) however many candidates there are.
struct Smallest {
    cap: usize,
    heap: BinaryHeap<(u64, u64)>,
}

impl Smallest {
    fn new(cap: usize) -> Smallest {
        Smallest {
            cap,
            heap: BinaryHeap::new(),
        }
    }

    fn push(&mut self, key: u64, row: u64) {
        if self.cap == 0 {
            return;
        }
        if self.heap.len() < self.cap {
            self.heap.push((key, row));
        } else if let Some(&top) = self.heap.peek()
            && (key, row) < top
        {
            self.heap.pop();
            self.heap.push((key, row));
        }
    }

    /// Smallest key first.
    fn sorted(self) -> Vec<(u64, u64)> {
        self.heap.into_sorted_vec()
    }
}

/// The numbers of the `n` rows a rehearsal grades.
pub fn choose(candidates: impl IntoIterator<Item = Candidate>, n: u64, seed: u64) -> BTreeSet<u64> {
    let n = usize::try_from(n).unwrap_or(usize::MAX);
    let mut strata: BTreeMap<String, Smallest> = BTreeMap::new();
    let mut rest = Smallest::new(n);
    for c in candidates {
        let k = key(seed, c.row);
        match c.gold {
            Some(g) => strata
                .entry(g)
                .or_insert_with(|| Smallest::new(n))
                .push(k, c.row),
            None => rest.push(k, c.row),
        }
    }
    let strata: Vec<Vec<(u64, u64)>> = strata.into_values().map(Smallest::sorted).collect();
    let mut chosen = BTreeSet::new();
    // 1. The floor: round by round, each gold value's next row, so that
    //    when N is smaller than the floors add up to, every value still
    //    gets as even a share as N allows.
    'floor: for round in 0..PER_GOLD_VALUE {
        for s in &strata {
            if chosen.len() >= n {
                break 'floor;
            }
            if let Some(&(_, row)) = s.get(round) {
                chosen.insert(row);
            }
        }
    }
    // 2. More gold rows, by key across every value (in proportion to each
    //    value's rows, in expectation).
    let mut more: Vec<(u64, u64)> = strata
        .iter()
        .flat_map(|s| s.iter().skip(PER_GOLD_VALUE).copied())
        .collect();
    more.sort_unstable();
    // 3. Then the rows without gold values.
    for (_, row) in more.into_iter().chain(rest.sorted()) {
        if chosen.len() >= n {
            break;
        }
        chosen.insert(row);
    }
    chosen
}

/// Tokens of a set of requests: what the plan counted and what was billed.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SampleTokens {
    /// Requests answered.
    pub answered: u64,
    /// The plan's prompt-token count of those requests.
    pub planned_input: u64,
    /// Billed input and output tokens of their answers.
    pub input: u64,
    pub output: u64,
}

/// The tokens the rest of the job will use, by the sample: the plan's
/// prompt tokens scaled by billed/planned of the sample (a provider counts
/// a few tokens per message the plan may not), and the sample's mean
/// output per request for each request left. `None` before any answer.
pub fn extrapolate(
    sample: SampleTokens,
    rest_requests: u64,
    rest_planned_input: u64,
) -> Option<(u64, u64)> {
    if sample.answered == 0 {
        return None;
    }
    let input = if sample.planned_input == 0 {
        rest_planned_input
    } else {
        (rest_planned_input as f64 * sample.input as f64 / sample.planned_input as f64).round()
            as u64
    };
    let output =
        (rest_requests as f64 * sample.output as f64 / sample.answered as f64).round() as u64;
    Some((input, output))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cands(gold: &[Option<&str>]) -> Vec<Candidate> {
        gold.iter()
            .enumerate()
            .map(|(i, g)| Candidate {
                row: i as u64 + 1,
                gold: g.map(str::to_string),
            })
            .collect()
    }

    fn gold_of(c: &[Candidate], chosen: &BTreeSet<u64>) -> BTreeMap<Option<String>, usize> {
        let mut m = BTreeMap::new();
        for row in chosen {
            *m.entry(c[*row as usize - 1].gold.clone()).or_default() += 1;
        }
        m
    }

    #[test]
    fn gold_values_first_each_with_its_floor_then_the_rest() {
        // 3 "a", 40 "b", 100 without gold.
        let mut g: Vec<Option<&str>> = vec![Some("a"); 3];
        g.extend(vec![Some("b"); 40]);
        g.extend(vec![None; 100]);
        let c = cands(&g);
        // (n, the rows of "a", of "b", without gold)
        let cases = [
            // The floor, as even as N allows.
            (1, 1, 0, 0),
            (2, 1, 1, 0),
            (6, 3, 3, 0),
            // Every "a" (it has 3 < 5), 5 "b", then more gold rows first.
            (8, 3, 5, 0),
            (20, 3, 17, 0),
            (43, 3, 40, 0),
            // Only then rows without gold.
            (50, 3, 40, 7),
            // More than there are: everything, once.
            (500, 3, 40, 100),
        ];
        for (n, a, b, none) in cases {
            let chosen = choose(c.clone(), n, 7);
            assert_eq!(chosen.len(), a + b + none, "n={n}");
            let m = gold_of(&c, &chosen);
            let got = |k: Option<&str>| m.get(&k.map(str::to_string)).copied().unwrap_or(0);
            assert_eq!(
                (got(Some("a")), got(Some("b")), got(None)),
                (a, b, none),
                "n={n}"
            );
        }
    }

    #[test]
    fn a_seed_gives_the_same_rows_another_seed_others() {
        let c = cands(&vec![None; 1000]);
        let one = choose(c.clone(), 50, 1);
        assert_eq!(one, choose(c.clone(), 50, 1));
        let two = choose(c.clone(), 50, 2);
        assert_ne!(one, two);
        // Spread over the file, not its first rows.
        assert!(one.iter().any(|row| *row > 500), "{one:?}");
        // A bigger sample of the same seed holds the smaller one.
        assert!(one.is_subset(&choose(c, 80, 1)));
    }

    #[test]
    fn no_rows_or_zero_asked_chooses_nothing() {
        assert!(choose(Vec::new(), 10, 0).is_empty());
        assert!(choose(cands(&[Some("a"), None]), 0, 0).is_empty());
    }

    #[test]
    fn the_rest_is_scaled_by_what_the_sample_was_billed() {
        let s = |answered, planned_input, input, output| SampleTokens {
            answered,
            planned_input,
            input,
            output,
        };
        // (sample, rest requests, rest planned input, expected)
        let cases = [
            (s(0, 0, 0, 0), 100, 5_000, None),
            // Billed as planned: the plan's input, the sample's mean output.
            (s(10, 500, 500, 40), 100, 5_000, Some((5_000, 400))),
            // The provider counted 10% more input than the plan.
            (s(10, 500, 550, 40), 100, 5_000, Some((5_500, 400))),
            (s(3, 300, 300, 10), 7, 700, Some((700, 23))),
            // Nothing left.
            (s(10, 500, 550, 40), 0, 0, Some((0, 0))),
        ];
        for (sample, n, planned, want) in cases {
            assert_eq!(extrapolate(sample, n, planned), want, "{sample:?}");
        }
    }
}
