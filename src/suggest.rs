//! "Did you mean": the nearest of a few known words to one typed wrong
//! (a spec key, a request parameter, a job name).

/// The candidate nearest to `key` by edit distance, when near enough to be
/// a slip of the keyboard rather than another word.
pub fn closest<'a>(key: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(key, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
        // A key cut short (`max_cost` for `max_cost_usd`) is far from the
        // whole key by edits but plainly the same word.
        .or_else(|| {
            let mut longer = candidates
                .iter()
                .filter(|c| key.len() >= 4 && c.len() > key.len() && c.starts_with(key));
            match (longer.next(), longer.next()) {
                (Some(c), None) => Some(*c),
                _ => None,
            }
        })
}

/// Levenshtein distance over characters: the words are short and few, so
/// the plain table beats a crate.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_words() {
        let table: &[(&str, &[&str], Option<&str>)] = &[
            (
                "max_token",
                &["max_tokens", "temperature"],
                Some("max_tokens"),
            ),
            (
                "temprature",
                &["max_tokens", "temperature"],
                Some("temperature"),
            ),
            ("max_cost", &["max_cost_usd", "model"], Some("max_cost_usd")),
            ("zzz", &["max_tokens"], None),
            ("jbo", &["job", "job2"], Some("job")),
        ];
        for (key, cands, want) in table {
            assert_eq!(closest(key, cands), *want, "{key}");
        }
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
