//! Deterministic hashing and a tiny PRNG.
//!
//! Everything the simulator "decides" (answers, failures, output order, ids) is
//! derived from these, so the same input gives the same bytes on every run and
//! after a restart.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// A stable 64-bit hash of several byte strings. Each part is length-prefixed
/// so that `("ab", "c")` and `("a", "bc")` differ.
pub fn hash64(parts: &[&[u8]]) -> u64 {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    first_u64(&hasher.finalize())
}

/// A stable hash of a JSON value that ignores object key order, so a client
/// that serialises the same request differently still gets the same answer.
pub fn hash_json(salt: &[u8], value: &Value) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update((salt.len() as u64).to_le_bytes());
    hasher.update(salt);
    feed(&mut hasher, value);
    first_u64(&hasher.finalize())
}

fn feed(hasher: &mut Sha256, value: &Value) {
    match value {
        Value::Null => hasher.update([0]),
        Value::Bool(b) => hasher.update([1, u8::from(*b)]),
        Value::Number(n) => {
            hasher.update([2]);
            feed_str(hasher, &n.to_string());
        }
        Value::String(s) => {
            hasher.update([3]);
            feed_str(hasher, s);
        }
        Value::Array(items) => {
            hasher.update([4]);
            hasher.update((items.len() as u64).to_le_bytes());
            items.iter().for_each(|item| feed(hasher, item));
        }
        Value::Object(map) => {
            hasher.update([5]);
            hasher.update((map.len() as u64).to_le_bytes());
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            for key in keys {
                feed_str(hasher, key);
                feed(hasher, &map[key]);
            }
        }
    }
}

fn feed_str(hasher: &mut Sha256, s: &str) {
    hasher.update((s.len() as u64).to_le_bytes());
    hasher.update(s.as_bytes());
}

fn first_u64(digest: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(bytes)
}

/// Maps a hash to `[0, 1)` with 53 bits of precision.
pub fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// SplitMix64: tiny, fast, and good enough to shuffle output lines.
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound` (bound > 0), without modulo bias.
    pub fn below(&mut self, bound: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % bound;
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % bound;
            }
        }
    }

    /// Fisher–Yates.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hash64_separates_parts() {
        assert_ne!(hash64(&[b"ab", b"c"]), hash64(&[b"a", b"bc"]));
        assert_eq!(hash64(&[b"x"]), hash64(&[b"x"]));
    }

    #[test]
    fn hash_json_ignores_key_order_but_not_values() {
        let a = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        let b = json!({"messages": [{"content": "hi", "role": "user"}], "model": "m"});
        let c = json!({"messages": [{"content": "ho", "role": "user"}], "model": "m"});
        assert_eq!(hash_json(b"s", &a), hash_json(b"s", &b));
        assert_ne!(hash_json(b"s", &a), hash_json(b"s", &c));
        assert_ne!(hash_json(b"s", &a), hash_json(b"t", &a));
    }

    #[test]
    fn unit_is_in_range() {
        assert_eq!(unit(0), 0.0);
        assert!(unit(u64::MAX) < 1.0);
    }

    #[test]
    fn shuffle_is_a_deterministic_permutation() {
        let mut a: Vec<u32> = (0..100).collect();
        let mut b = a.clone();
        SplitMix64::new(42).shuffle(&mut a);
        SplitMix64::new(42).shuffle(&mut b);
        assert_eq!(a, b);
        assert_ne!(a, (0..100).collect::<Vec<_>>());
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
    }
}
