//! What a killed direct run never wrote to the cost ledger.
//!
//! A direct run puts its usage in `usage.jsonl` every 30 s and at its end,
//! so a SIGKILL loses the usage it made durable since its last line. The
//! outcome log still holds those answers with their tokens. At its start a
//! run compares the tokens of the answers the state holds for its plan with
//! every ledger line of the job: what the answers carry beyond the ledger
//! was a killed run's, and goes in as one line.
//!
//! It can fall short: the ledger side also holds answers no longer in the
//! plan (rows changed since), which only shrinks the difference; input and
//! output tokens are compared apart, each floored at zero. Answers re-sent
//! because a kill lost them before they were durable were billed twice by
//! the provider; the state never saw the lost copy, so the ledger holds each
//! answer once. One case counts more than was paid: two rows with the same
//! request (same text) share one answer, and the held side counts it for
//! each row; when a kill falls after the first was answered and before the
//! second was sent, the second is never sent, yet its tokens are recovered.
//! That is one answer's tokens per such row, the same as an uninterrupted
//! run pays for it (it sends both).

/// Token counts of answers, as a ledger line holds them: input and output,
/// the prompt-cache writes and reads billed apart from input (Anthropic's
/// `usage.cache_creation_input_tokens`, `cache_read_input_tokens`; OpenAI's
/// cached input), and the reasoning tokens among the output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    pub input: u64,
    pub output: u64,
    pub cache_write: u64,
    pub cache_read: u64,
    pub reasoning: u64,
}

impl Tokens {
    pub fn add(&mut self, t: Tokens) {
        self.input = self.input.saturating_add(t.input);
        self.output = self.output.saturating_add(t.output);
        self.cache_write = self.cache_write.saturating_add(t.cache_write);
        self.cache_read = self.cache_read.saturating_add(t.cache_read);
        self.reasoning = self.reasoning.saturating_add(t.reasoning);
    }

    /// Each count less `t`'s, floored at zero.
    pub fn less(self, t: Tokens) -> Tokens {
        Tokens {
            input: self.input.saturating_sub(t.input),
            output: self.output.saturating_sub(t.output),
            cache_write: self.cache_write.saturating_sub(t.cache_write),
            cache_read: self.cache_read.saturating_sub(t.cache_read),
            reasoning: self.reasoning.saturating_sub(t.reasoning),
        }
    }

    pub fn is_zero(&self) -> bool {
        *self == Tokens::default()
    }
}

/// The tokens of `held`, the answers the state holds, that no line of
/// `job` in the ledger text accounts for.
pub fn shortfall(ledger: &str, job: &str, held: Tokens) -> Tokens {
    let mut booked = Tokens::default();
    for line in ledger.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v.get("job").and_then(serde_json::Value::as_str) != Some(job) {
            continue;
        }
        let n = |k: &str| v.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
        booked.add(Tokens {
            input: n("input_tokens"),
            output: n("output_tokens"),
            cache_write: n("cache_write_tokens"),
            cache_read: n("cache_read_tokens"),
            reasoning: n("reasoning_tokens"),
        });
    }
    held.less(booked)
}

#[cfg(test)]
mod tests {
    use super::{Tokens, shortfall};

    fn line(job: &str, id: &str, i: u64, o: u64) -> String {
        format!(
            "{{\"ts\":1,\"job\":\"{job}\",\"batch_id\":\"{id}\",\"input_tokens\":{i},\"output_tokens\":{o}}}\n"
        )
    }

    fn io((input, output): (u64, u64)) -> Tokens {
        Tokens {
            input,
            output,
            ..Tokens::default()
        }
    }

    #[test]
    fn only_what_no_ledger_line_of_the_job_holds() {
        let two_runs = line("j", "direct-1-1", 60, 6) + &line("j", "direct-2-1", 40, 4);
        // (ledger text, tokens held, tokens to add)
        type Case = (String, (u64, u64), (u64, u64));
        let cases: Vec<Case> = vec![
            // Every answer ledgered: nothing to add.
            (two_runs.clone(), (100, 10), (0, 0)),
            // A killed run's last 30 s: its answers are held, not ledgered.
            (two_runs.clone(), (130, 13), (30, 3)),
            // Nothing ledgered yet (every run so far killed).
            (String::new(), (130, 13), (130, 13)),
            // Another job's lines do not count for this one.
            (line("other", "b1", 500, 50), (130, 13), (130, 13)),
            // Batch lines of the same job count (answers of an earlier mode).
            (line("j", "batch_abc", 130, 13), (130, 13), (0, 0)),
            // The ledger holds more (rows changed since): nothing, never negative.
            (line("j", "direct-1-1", 200, 5), (130, 13), (0, 8)),
            // A line cut by a kill, or not JSON, is skipped.
            (
                two_runs.clone() + "{\"job\":\"j\",\"inp",
                (130, 13),
                (30, 3),
            ),
        ];
        for (ledger, held, want) in cases {
            assert_eq!(shortfall(&ledger, "j", io(held)), io(want), "{ledger}");
        }
    }

    #[test]
    fn cache_tokens_are_counted_apart() {
        let cached = |w: u64, r: u64| Tokens {
            input: 10,
            output: 2,
            cache_write: w,
            cache_read: r,
            reasoning: 0,
        };
        let ledger = "{\"job\":\"j\",\"batch_id\":\"direct-1-1\",\"input_tokens\":10,\"output_tokens\":2,\"cache_write_tokens\":5,\"cache_read_tokens\":30}\n";
        // (tokens held, tokens to add)
        for (held, want) in [
            (cached(5, 30), Tokens::default()),
            (
                cached(8, 90),
                Tokens {
                    cache_write: 3,
                    cache_read: 60,
                    ..Tokens::default()
                },
            ),
            // A line without cache counts books none.
            (cached(0, 0), Tokens::default()),
        ] {
            assert_eq!(shortfall(ledger, "j", held), want, "{held:?}");
        }
    }
}
