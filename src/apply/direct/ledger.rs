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

/// The tokens (input, output) of `held`, the answers the state holds, that
/// no line of `job` in the ledger text accounts for.
pub fn shortfall(ledger: &str, job: &str, held: (u64, u64)) -> (u64, u64) {
    let (mut input, mut output) = (0u64, 0u64);
    for line in ledger.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v.get("job").and_then(serde_json::Value::as_str) != Some(job) {
            continue;
        }
        let n = |k: &str| v.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
        input = input.saturating_add(n("input_tokens"));
        output = output.saturating_add(n("output_tokens"));
    }
    (held.0.saturating_sub(input), held.1.saturating_sub(output))
}

#[cfg(test)]
mod tests {
    use super::shortfall;

    fn line(job: &str, id: &str, i: u64, o: u64) -> String {
        format!(
            "{{\"ts\":1,\"job\":\"{job}\",\"batch_id\":\"{id}\",\"input_tokens\":{i},\"output_tokens\":{o}}}\n"
        )
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
            assert_eq!(shortfall(&ledger, "j", held), want, "{ledger}");
        }
    }
}
