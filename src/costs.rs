//! `costs`: token usage and spend over time, from the ledger `apply` keeps
//! in `<state>/usage.jsonl` (one line per batch, written once). Reads no
//! job database, so it works while jobs run.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// One ledger line.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Entry {
    pub ts: u64,
    pub job: String,
    pub batch_id: String,
    /// `openai`, `anthropic` or `simulated`.
    #[serde(default = "unknown_provider")]
    pub provider: String,
    pub model: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Prompt-cache writes and reads (Anthropic).
    #[serde(default)]
    pub cache_write_tokens: u64,
    #[serde(default)]
    pub cache_read_tokens: u64,
    /// Of `output_tokens`, those spent reasoning.
    #[serde(default)]
    pub reasoning_tokens: u64,
    pub cost_usd: f64,
    /// What the prompt cache saved on the line's tokens; absent in lines
    /// without cache tokens (and in older ledgers).
    #[serde(default)]
    pub cache_saved_usd: Option<f64>,
    #[serde(default)]
    pub simulated: bool,
}

fn unknown_provider() -> String {
    "openai".into()
}

impl Entry {
    /// A line of a direct-mode run (`direct-<start>-<pid>-<n>`, or its
    /// `-recovered` line): standard prices, no batch.
    pub fn is_direct(&self) -> bool {
        self.batch_id.starts_with("direct-")
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Sum {
    /// Ledger lines of batches (one per batch).
    pub batches: u64,
    /// Ledger lines of direct-mode runs (one per 30 s of a run).
    #[serde(skip_serializing_if = "is_zero")]
    pub direct_lines: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub cache_write_tokens: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub cache_read_tokens: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub reasoning_tokens: u64,
    pub cost_usd: f64,
    /// What the prompt cache saved, summed over the lines that say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_saved_usd: Option<f64>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Sum {
    fn add(&mut self, e: &Entry) {
        if e.is_direct() {
            self.direct_lines += 1;
        } else {
            self.batches += 1;
        }
        self.input_tokens += e.input_tokens;
        self.output_tokens += e.output_tokens;
        self.cache_write_tokens += e.cache_write_tokens;
        self.cache_read_tokens += e.cache_read_tokens;
        self.reasoning_tokens += e.reasoning_tokens;
        self.cost_usd += e.cost_usd;
        if let Some(s) = e.cache_saved_usd {
            *self.cache_saved_usd.get_or_insert(0.0) += s;
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    pub since: Option<u64>,
    pub total: Sum,
    /// Simulated runs are kept apart: they cost nothing real.
    pub simulated: Sum,
    pub by_day: BTreeMap<String, Sum>,
    /// OpenAI's and Anthropic's spend side by side.
    pub by_provider: BTreeMap<String, Sum>,
    /// Batch prices and direct requests' standard prices apart.
    pub by_lane: BTreeMap<String, Sum>,
    pub by_model: BTreeMap<String, Sum>,
    pub by_job: BTreeMap<String, Sum>,
}

/// UTC calendar day of a Unix time, `2026-11-27`.
fn day(ts: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(ts);
    humantime::format_rfc3339_seconds(t).to_string()[..10].to_string()
}

/// Pure aggregation: entries at or after `since` (Unix seconds), real spend
/// by day, model and job; simulated batches summed apart.
pub fn aggregate(entries: &[Entry], since: Option<u64>) -> Report {
    let mut r = Report {
        since,
        ..Report::default()
    };
    for e in entries.iter().filter(|e| since.is_none_or(|s| e.ts >= s)) {
        if e.simulated {
            r.simulated.add(e);
            continue;
        }
        r.total.add(e);
        r.by_day.entry(day(e.ts)).or_default().add(e);
        r.by_provider.entry(e.provider.clone()).or_default().add(e);
        r.by_lane.entry(lane(e).into()).or_default().add(e);
        r.by_model.entry(e.model.clone()).or_default().add(e);
        r.by_job.entry(e.job.clone()).or_default().add(e);
    }
    r
}

/// How a lane is named wherever spend is shown.
pub fn lane(e: &Entry) -> &'static str {
    if e.is_direct() {
        "direct (standard prices)"
    } else {
        "batch (batch prices)"
    }
}

/// What one job's direct-mode runs spent, for its report: the ledger is
/// the one record of direct spend (direct mode has no batch records).
pub fn direct_spend(entries: &[Entry], job: &str) -> Sum {
    let mut s = Sum::default();
    for e in entries.iter().filter(|e| e.job == job && e.is_direct()) {
        s.add(e);
    }
    s
}

/// The ledger lines in `text` (a line that does not parse, such as one
/// torn by a kill, is skipped).
pub fn entries_of(text: &str) -> Vec<Entry> {
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// What `job` spent in all, both lanes, by the ledger lines in `text`.
pub fn job_spend(text: &str, job: &str) -> f64 {
    entries_of(text)
        .iter()
        .filter(|e| e.job == job)
        .map(|e| e.cost_usd)
        .sum()
}

/// Read the ledger; a missing file is an empty ledger. A bad line is
/// skipped (a line torn by a crash must not hide the rest) and its line
/// number returned, so the totals are never silently short.
pub fn read(state_root: &Path) -> std::io::Result<(Vec<Entry>, Vec<usize>)> {
    let text = match std::fs::read_to_string(crate::state::Layout::ledger_in(state_root)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((vec![], vec![])),
        Err(e) => return Err(e),
    };
    let mut entries = Vec::new();
    let mut bad = Vec::new();
    for (i, l) in text.lines().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(l) {
            Ok(e) => entries.push(e),
            Err(_) => bad.push(i + 1),
        }
    }
    Ok((entries, bad))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jobs_spend_by_lane_from_the_ledger_text() {
        let line = |job: &str, id: &str, cost: f64| {
            format!(
                "{{\"ts\":1,\"job\":\"{job}\",\"batch_id\":\"{id}\",\"model\":\"m\",\"input_tokens\":1,\"output_tokens\":1,\"cost_usd\":{cost}}}\n"
            )
        };
        let text = line("j", "direct-1-1", 0.25)
            + &line("j", "batch_abc", 4.0)
            + &line("other", "direct-2-1", 1.0)
            + &line("j", "direct-1-recovered", 0.5)
            + "{\"job\":\"j\",\"batch_id\":\"direct-3-1\",\"cost_u";
        let entries = entries_of(&text);
        assert_eq!(entries.len(), 4, "the torn line is skipped");
        assert_eq!(direct_spend(&entries, "j").cost_usd, 0.75);
        assert_eq!(job_spend(&text, "j"), 4.75);
        assert_eq!(job_spend(&text, "none"), 0.0);
        assert_eq!(job_spend("", "j"), 0.0);
    }

    fn e(ts: u64, job: &str, model: &str, cost: f64, simulated: bool) -> Entry {
        Entry {
            ts,
            job: job.into(),
            batch_id: format!("b{ts}"),
            provider: "openai".into(),
            cache_write_tokens: 0,
            cache_read_tokens: 0,
            reasoning_tokens: 0,
            cache_saved_usd: None,
            model: model.into(),
            input_tokens: 100,
            output_tokens: 10,
            cost_usd: cost,
            simulated,
        }
    }

    #[test]
    fn aggregates_by_day_model_and_job() {
        let day1 = 1_795_800_000; // 2026-11-27
        let day2 = day1 + 86_400;
        let entries = [
            e(day1, "a", "gpt-4o-mini", 1.0, false),
            e(day1 + 60, "b", "gpt-4o-mini", 2.0, false),
            e(day2, "a", "gpt-4.1", 4.0, false),
            e(day2, "demo", "gpt-4o-mini", 9.0, true),
        ];
        let r = aggregate(&entries, None);
        assert_eq!(r.total.batches, 3);
        assert!((r.total.cost_usd - 7.0).abs() < 1e-9);
        assert_eq!(r.simulated.batches, 1);
        assert_eq!(r.by_day.len(), 2);
        assert!((r.by_day[&day(day1)].cost_usd - 3.0).abs() < 1e-9);
        assert!((r.by_model["gpt-4o-mini"].cost_usd - 3.0).abs() < 1e-9);
        assert!((r.by_job["a"].cost_usd - 5.0).abs() < 1e-9);
        assert_eq!(r.by_job["a"].input_tokens, 200);
        let recent = aggregate(&entries, Some(day2));
        assert_eq!(recent.total.batches, 1);
        assert!(!recent.by_job.contains_key("b"));
        assert_eq!(day(day1), "2026-11-27");
    }

    #[test]
    fn torn_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("usage.jsonl"),
            "{\"ts\":1,\"job\":\"j\",\"batch_id\":\"b\",\"model\":\"m\",\"input_tokens\":1,\"output_tokens\":1,\"cost_usd\":0.5}\n{\"ts\":2,\"jo",
        )
        .unwrap();
        let (entries, bad) = read(dir.path()).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(bad, [2], "the torn line is named");
        let (none, bad) = read(&dir.path().join("none")).unwrap();
        assert!(none.is_empty() && bad.is_empty());
    }
}
