//! The two append-only logs a job keeps beside its database: `events.jsonl`
//! (what happened, when; the last few runs) and the state root's
//! `usage.jsonl` ledger (tokens and cost once per batch, read by `costs`).

use std::io::Write;
use std::path::Path;

use serde::Serialize;

/// `events.jsonl` keeps the events of this many runs.
pub const KEEP_EVENT_RUNS: usize = 10;
const RUN_MARK: &str = "\"event\":\"run started";

/// Start a run's events: drop all but the last `KEEP_EVENT_RUNS - 1` runs,
/// then record this one.
pub fn start_run(events: &Path) {
    prune(events, KEEP_EVENT_RUNS);
    append_event(
        events,
        None,
        &format!("run started (pid {})", std::process::id()),
    );
}

fn prune(path: &Path, keep: usize) {
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    let starts: Vec<usize> = text
        .match_indices(RUN_MARK)
        .map(|(i, _)| text[..i].rfind('\n').map_or(0, |n| n + 1))
        .collect();
    if starts.len() < keep {
        return;
    }
    let from = starts[starts.len() + 1 - keep];
    let tmp = path.with_extension("jsonl.tmp");
    if crate::nofollow::write(&tmp, &text.as_bytes()[from..]).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

/// One line in `events.jsonl`. Events are for people; a failure to write
/// one never stops a job.
pub fn append_event(path: &Path, chunk: Option<u32>, msg: &str) {
    #[derive(Serialize)]
    struct Ev<'a> {
        ts: String,
        chunk: Option<u32>,
        event: &'a str,
    }
    let line = serde_json::to_string(&Ev {
        ts: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        chunk,
        event: msg,
    })
    .expect("events serialize");
    if let Ok(mut f) = crate::nofollow::open(
        std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true),
        path,
    ) {
        let _ = append_line(&mut f, &line);
    }
}

/// Append `line` and a newline to `f` (opened to read and append) in one
/// write, on a line of its own: a last line torn by a crash is ended first,
/// so the new record is not glued to it and lost with it.
fn append_line(f: &mut std::fs::File, line: &str) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let len = f.metadata()?.len();
    let mut text = String::with_capacity(line.len() + 2);
    if len > 0 {
        let mut last = [0u8];
        f.read_exact_at(&mut last, len - 1)?;
        if last[0] != b'\n' {
            text.push('\n');
        }
    }
    text.push_str(line);
    text.push('\n');
    f.write_all(text.as_bytes())
}

/// One batch's usage in the ledger.
#[derive(Debug, Clone, Serialize)]
pub struct LedgerEntry<'a> {
    pub ts: u64,
    pub job: &'a str,
    pub batch_id: &'a str,
    pub provider: &'a str,
    pub model: &'a str,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Prompt-cache writes and reads, when there were any: billed apart
    /// from `input_tokens` on both providers (OpenAI's cached input is
    /// taken out of its input count when read).
    #[serde(skip_serializing_if = "is_zero")]
    pub cache_write_tokens: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub cache_read_tokens: u64,
    /// Of `output_tokens`, those a reasoning model spent reasoning.
    #[serde(skip_serializing_if = "is_zero")]
    pub reasoning_tokens: u64,
    /// What the prompt cache saved on these tokens at the prices paid
    /// (`cost::cache_saving`), when there were cache tokens and a price.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_saved_usd: Option<f64>,
    pub cost_usd: f64,
    /// What the same tokens cost at standard (non-batch) prices.
    pub standard_cost_usd: f64,
    pub simulated: bool,
    /// `twin` for a batch a create made behind the job's back (a gateway
    /// that retried it): paid for, not part of the job's plan.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'a str>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Append the entry unless the ledger already has one for its batch (a
/// crash between the append and the unit's flag leaves the line written).
pub fn record_usage_once(ledger: &Path, entry: &LedgerEntry<'_>) -> std::io::Result<()> {
    let needle = format!("\"batch_id\":{}", serde_json::json!(entry.batch_id));
    let already = std::fs::read_to_string(ledger)
        .map(|t| t.lines().any(|l| l.contains(&needle)))
        .unwrap_or(false);
    if already {
        return Ok(());
    }
    let line = serde_json::to_string(entry).expect("entries serialize");
    let mut f = crate::nofollow::open(
        std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true),
        ledger,
    )?;
    // The ledger sits beside the job folders, not inside one.
    super::owner_only(ledger, 0o600);
    append_line(&mut f, &line)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_keep_the_last_runs() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("events.jsonl");
        for run in 0..15 {
            prune(&p, 10);
            append_event(&p, None, &format!("run started (pid {run})"));
            append_event(&p, Some(1), &format!("work of run {run}"));
        }
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text.matches(RUN_MARK).count(), 10);
        assert!(text.contains("work of run 14") && text.contains("work of run 5"));
        assert!(!text.contains("work of run 4\""), "{text}");
    }

    #[test]
    fn a_torn_last_line_does_not_swallow_the_next_record() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = dir.path().join("usage.jsonl");
        let events = dir.path().join("events.jsonl");
        for p in [&ledger, &events] {
            std::fs::write(p, "{\"ts\":1,\"job\":\"j\",\"batch_id\":\"b0\",\"inp").unwrap();
        }
        let entry = LedgerEntry {
            ts: 2,
            job: "j",
            batch_id: "b1",
            provider: "openai",
            model: "m",
            input_tokens: 10,
            output_tokens: 1,
            cache_write_tokens: 0,
            cache_read_tokens: 0,
            reasoning_tokens: 0,
            cache_saved_usd: None,
            cost_usd: 0.5,
            standard_cost_usd: 1.0,
            simulated: false,
            kind: None,
        };
        record_usage_once(&ledger, &entry).unwrap();
        append_event(&events, Some(1), "after the tear");
        for (p, needle) in [(&ledger, "\"b1\""), (&events, "after the tear")] {
            let text = std::fs::read_to_string(p).unwrap();
            let last = text.lines().last().unwrap();
            let v: serde_json::Value = serde_json::from_str(last).unwrap();
            assert!(v.to_string().contains(needle), "{text}");
            assert!(text.ends_with('\n'));
        }
    }

    #[test]
    fn usage_is_recorded_once_per_batch() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("usage.jsonl");
        let e = |batch_id| LedgerEntry {
            ts: 1,
            job: "j",
            batch_id,
            provider: "openai",
            model: "m",
            input_tokens: 10,
            cache_write_tokens: 0,
            cache_read_tokens: 0,
            reasoning_tokens: 0,
            cache_saved_usd: None,
            output_tokens: 2,
            cost_usd: 0.5,
            standard_cost_usd: 1.0,
            simulated: false,
            kind: None,
        };
        record_usage_once(&p, &e("b1")).unwrap();
        record_usage_once(&p, &e("b1")).unwrap();
        record_usage_once(&p, &e("b12")).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
    }
}
