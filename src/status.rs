//! The status snapshot: `<state>/<job>/status.json`, rewritten atomically by
//! `apply` after every transition, so `status` answers at once, even while
//! `apply` holds the job's lock, without opening the database.

use std::collections::BTreeMap;
use std::io::{self, Write};

use serde::{Deserialize, Serialize};

use crate::cost::usd;
use crate::spec::units::human_bytes;
use crate::state::{Layout, Phase, UnitRecord};
use crate::ui::{Paint, Ui, num, plural};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Planned; nothing submitted yet.
    Planned,
    /// An `apply` or `resume` is working on it now.
    Running,
    /// Batches are out but no process is watching them (after --detach or Ctrl-C).
    Detached,
    /// Stopped by the halt policy.
    Halted,
    /// Every request has a final outcome and the output is written.
    Finished,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnitStatus {
    pub id: u32,
    pub attempt: u32,
    pub phase: Phase,
    pub batch_id: Option<String>,
    pub remote_status: Option<String>,
    pub requests: u64,
    pub completed: u64,
    pub failed: u64,
    pub bytes: u64,
    pub tokens: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
    pub submitted_at: Option<u64>,
    pub ended_at: Option<u64>,
    /// Set while the chunk is parked after a transient provider failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
}

/// A chunk waiting out a transient provider failure (HTTP 429/5xx, network)
/// before its step is tried again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Backoff {
    /// The step that failed (`upload`, `create`, `status`, `download`, `delete`, `cancel`).
    pub step: String,
    /// Failures in a row of this chunk's steps.
    pub failures: u32,
    /// When the first of them happened (Unix seconds).
    pub since: u64,
    /// When the step is tried again (Unix seconds).
    pub retry_at: u64,
    /// The last error, as shown to the user (no secrets).
    pub last_error: String,
}

/// What was paid, at batch prices, beside what the same tokens cost at
/// standard prices (the receipt of the final summary and `status`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    pub paid_usd: f64,
    pub standard_usd: f64,
    pub saved_usd: f64,
    /// What the prompt cache saved at the prices paid: cached tokens at the
    /// plain input price less what they cost (`cost::cache_saving`);
    /// `None` when nothing was read from or written to a cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_saved_usd: Option<f64>,
}

impl From<&UnitRecord> for UnitStatus {
    fn from(u: &UnitRecord) -> Self {
        UnitStatus {
            id: u.id,
            attempt: u.attempt,
            phase: u.phase,
            batch_id: u.batch_id.clone(),
            remote_status: u.remote_status.clone(),
            requests: u.requests,
            completed: u.completed,
            failed: u.failed,
            bytes: u.bytes,
            tokens: u.tokens,
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            cost_usd: u.cost_usd,
            submitted_at: u.submitted_at,
            ended_at: u.ended_at,
            backoff: None,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Totals {
    pub rows: u64,
    pub to_grade: u64,
    pub already_done: u64,
    /// Answered, whether or not the answer parsed.
    pub succeeded: u64,
    /// Of `succeeded`, answers that did not parse (or broke the answer
    /// schema): the output marks them `parse_error`.
    #[serde(default)]
    pub parse_failures: u64,
    pub failed: u64,
    pub pending: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    pub job: String,
    pub state: RunState,
    /// The process working on the job, while `state` is `running`.
    pub pid: Option<u32>,
    pub updated_at: u64,
    pub started_at: Option<u64>,
    pub model: String,
    pub totals: Totals,
    pub estimated_cost_usd: Option<f64>,
    pub actual_cost_usd: f64,
    pub output_path: Option<String>,
    pub message: Option<String>,
    /// Paid at batch prices against standard prices.
    #[serde(default)]
    pub receipt: Receipt,
    /// Since when every provider call has been failing transiently (Unix
    /// seconds); `None` while the provider answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outage_since: Option<u64>,
    /// The local step a running process is in when it is not waiting on
    /// the provider (e.g. `writing the output`), and since when (Unix
    /// seconds): a long step of its own is not mistaken for a hang.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<(String, u64)>,
    pub units: Vec<UnitStatus>,
    /// A direct-mode run (`provider.mode: direct`): rates, what is in flight,
    /// errors by class and the endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct: Option<DirectView>,
    /// What the last output pass found: agreement with the gold values,
    /// failure examples, the quality gate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<Quality>,
    /// The job's deadline as its first `apply` fixed it (`deadline:`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<crate::deadline::Deadline>,
}

/// The output pass's findings, kept for `status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Quality {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agreement: Vec<crate::agreement::FieldAgreement>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<crate::grades::FailureClass>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<crate::agreement::GateCheck>,
}

/// What a direct-mode run is doing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DirectView {
    /// Requests of this run with a durable outcome.
    pub done: u64,
    /// Requests this run means to send (its first pass).
    pub total: u64,
    pub in_flight: u64,
    /// Requests that may be in flight now (the window after 429s).
    pub window: u64,
    pub requests_per_s: f64,
    pub tokens_per_s: f64,
    pub eta_secs: Option<u64>,
    /// Failed attempts by class (`rate_limited`, `server_error`, `network`,
    /// `refused`, `rejected`, `bad_response`), retried or recorded.
    pub errors: BTreeMap<String, u64>,
    /// Sending is paused until then (Unix seconds), after a 429 or an empty
    /// server-side bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_until: Option<u64>,
    pub endpoints: Vec<EndpointView>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EndpointView {
    pub url: String,
    pub outstanding: u64,
    pub sent: u64,
    /// Left out until then (Unix seconds) after failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left_out_until: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// One line of a direct run: a bar, done/total, rates, ETA.
pub fn direct_lines(d: &DirectView, now: u64) -> Vec<String> {
    const WIDTH: u64 = 24;
    let filled = (d.done.min(d.total) * WIDTH)
        .checked_div(d.total)
        .unwrap_or(WIDTH);
    let bar: String = (0..WIDTH)
        .map(|i| if i < filled { '#' } else { '-' })
        .collect();
    let mut out = vec![format!(
        "[{bar}] {}/{}  {:.0} req/s  {:.0} tok/s  ETA {}  in flight {} of {}",
        num(d.done),
        num(d.total),
        d.requests_per_s,
        d.tokens_per_s,
        d.eta_secs.map_or("?".to_string(), short_duration),
        num(d.in_flight),
        num(d.window)
    )];
    if !d.errors.is_empty() {
        let parts: Vec<String> = d
            .errors
            .iter()
            .map(|(k, v)| format!("{k} {}", num(*v)))
            .collect();
        out.push(format!("errors {}", parts.join(", ")));
    }
    if let Some(t) = d.paused_until.filter(|t| *t > now) {
        out.push(format!(
            "sending paused for {} (rate limit)",
            short_duration(t - now)
        ));
    }
    if d.endpoints.len() > 1 || d.endpoints.iter().any(|e| e.left_out_until.is_some()) {
        for e in &d.endpoints {
            let mut line = format!(
                "endpoint {}: {} out, {} sent",
                e.url,
                num(e.outstanding),
                num(e.sent)
            );
            if let Some(t) = e.left_out_until.filter(|t| *t > now) {
                line.push_str(&format!(", left out for {}", short_duration(t - now)));
                if let Some(err) = &e.last_error {
                    line.push_str(&format!(" ({err})"));
                }
            }
            out.push(line);
        }
    }
    out
}

/// What a `plan` in progress writes for `status` (`planning.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Planning {
    pub pid: u32,
    pub started_at: u64,
    /// Bytes of the inputs read so far, and in all.
    pub read_bytes: u64,
    pub total_bytes: u64,
}

impl Planning {
    /// One line for `status`.
    pub fn line(&self, job: &str, now: u64) -> String {
        let pct = (self.read_bytes * 100)
            .checked_div(self.total_bytes)
            .unwrap_or(0)
            .min(100);
        format!(
            "job {job}  planning: pid {} is reading and counting the inputs ({pct}%, {} so far); `status` shows the plan when it is done",
            self.pid,
            short_duration(now.saturating_sub(self.started_at))
        )
    }
}

/// Write the planning marker atomically.
pub fn write_planning(layout: &Layout, p: &Planning) -> std::io::Result<()> {
    let path = layout.planning();
    let tmp = path.with_extension("json.tmp");
    crate::nofollow::write(&tmp, &serde_json::to_vec(p).expect("plain data serializes"))?;
    std::fs::rename(&tmp, path)
}

/// The planning marker, if a plan left one (it may be stale: check the pid).
pub fn read_planning(layout: &Layout) -> Option<Planning> {
    let bytes = std::fs::read(layout.planning()).ok()?;
    serde_json::from_slice(&bytes).ok()
}

pub fn clear_planning(layout: &Layout) {
    let _ = std::fs::remove_file(layout.planning());
}

/// Replace the snapshot atomically (write a temp file, then rename).
pub fn write(layout: &Layout, snap: &Snapshot) -> std::io::Result<()> {
    let tmp = layout.status_tmp();
    crate::nofollow::write(
        &tmp,
        &serde_json::to_vec_pretty(snap).expect("snapshot serializes"),
    )?;
    std::fs::rename(&tmp, layout.status())
}

pub fn read(layout: &Layout) -> std::io::Result<Option<Snapshot>> {
    match std::fs::read(layout.status()) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn phase_word(u: &UnitStatus, now: u64, running: bool) -> String {
    if let Some(b) = &u.backoff {
        let failures = format!("{} failure{}", b.failures, plural(b.failures.into(), "s"));
        // Nobody retries while no process runs: say what the next run does.
        return if !running {
            format!("to retry ({failures})")
        } else if b.retry_at > now {
            format!("retry in {} ({failures})", secs(b.retry_at - now))
        } else {
            format!("retrying ({failures})")
        };
    }
    match u.phase {
        Phase::Planned => "planned".into(),
        Phase::Uploaded => "uploaded".into(),
        Phase::Creating => "submitting".into(),
        Phase::Submitted => u
            .remote_status
            .clone()
            .unwrap_or_else(|| "submitted".into()),
        Phase::Ended => format!(
            "{} (downloading)",
            u.remote_status.as_deref().unwrap_or("ended")
        ),
        Phase::Downloaded => "merging".into(),
        Phase::Merged => u.remote_status.clone().unwrap_or_else(|| "merged".into()),
    }
}

/// `40s`, `3m`, `1h 5m`.
/// The outage line of the live view, `status` and the event lines: once
/// every provider call has been failing for a while, say so, and say what
/// the user can do.
pub fn outage_line(job: &str, outage_since: Option<u64>, now_secs: u64) -> Option<String> {
    const AFTER_SECS: u64 = 10;
    let down = now_secs.saturating_sub(outage_since?);
    (down >= AFTER_SECS).then(|| {
        format!(
            "provider not answering for {}, retrying; Ctrl-C stops, `batchgrader resume {job}` continues",
            short_duration(down)
        )
    })
}

/// `45s`, `3m`, `2h 5m`: minutes are precise enough for a wait or an outage.
/// The deadline and the time left, for `status` and the live view.
pub fn deadline_line(d: &crate::deadline::Deadline, now: u64) -> String {
    let at = utc_time(d.at);
    if now >= d.at {
        format!("deadline {at}: passed")
    } else if d.due(now) {
        format!(
            "deadline {at}: in {}; past the margin, the rows left go to the direct lane",
            short_duration(d.at - now)
        )
    } else {
        format!(
            "deadline {at}: in {}; the batches give way to the direct lane in {}",
            short_duration(d.at - now),
            short_duration(d.switch_at() - now)
        )
    }
}

/// A Unix time as RFC 3339 UTC, to the second.
pub fn utc_time(unix: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix))
        .to_string()
}

pub fn short_duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if (s % 3600) / 60 == 0 => format!("{}h", s / 3600),
        s => format!("{}h {}m", s / 3600, (s % 3600) / 60),
    }
}

fn secs(n: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(n)).to_string()
}

fn elapsed(u: &UnitStatus, now: u64) -> String {
    match (u.submitted_at, u.ended_at) {
        (Some(s), Some(e)) => secs(e.saturating_sub(s)),
        (Some(s), None) => secs(now.saturating_sub(s)),
        _ => "-".into(),
    }
}

/// `paid $X at batch prices; $Y at standard prices; saved $Z`, once the
/// runner has filled the receipt in.
pub fn receipt_line(r: &Receipt) -> Option<String> {
    (*r != Receipt::default()).then(|| {
        format!(
            "paid {} at batch prices; {} at standard prices; saved {}{}",
            usd(r.paid_usd),
            usd(r.standard_usd),
            usd(r.saved_usd),
            r.cache_saved_usd
                .map(cache_saving_words)
                .unwrap_or_default()
        )
    })
}

/// The counts of the rows line, with the chunk table as their one source
/// for what the provider has done and the merged outcomes for the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowCounts {
    /// Merged answers, this run's and earlier runs'.
    pub answered: u64,
    /// Requests the provider reports done (answered or failed) in chunks
    /// whose results are not merged yet: taken out of `pending`, so that
    /// the line never shows less done than the table under it.
    pub collecting: u64,
    pub failed: u64,
    pub pending: u64,
}

/// The rows line's counts: `answered + collecting + failed + pending` is
/// always the job's rows (given totals that add up, as the runner's do).
pub fn row_counts(t: &Totals, units: &[UnitStatus]) -> RowCounts {
    let reported: u64 = units
        .iter()
        .filter(|u| u.phase != Phase::Merged)
        .map(|u| (u.completed + u.failed).min(u.requests))
        .sum();
    let collecting = reported.min(t.pending);
    RowCounts {
        answered: t.succeeded + t.already_done,
        collecting,
        failed: t.failed,
        pending: t.pending - collecting,
    }
}

/// `; the prompt cache saved $X` beside the batch discount's saving, or
/// what it cost when its writes were not paid back by reads.
pub fn cache_saving_words(saved: f64) -> String {
    if saved < -0.000_05 {
        format!("; the prompt cache cost {} more", usd(-saved))
    } else {
        format!("; the prompt cache saved {}", usd(saved))
    }
}

/// The chunk table and totals, for `status` and the live view of `apply`.
/// `now` (Unix seconds) is passed in so that the text depends on the
/// snapshot alone.
/// Words every message of a cancelled job holds, so `status` says
/// "cancelled" rather than "halted by policy".
pub const CANCELLED_BY: &str = "cancelled with `batchgrader cancel`";

pub fn render(ui: &Ui, s: &Snapshot, now: u64) -> String {
    let mut out = Vec::new();
    render_to(&mut out, ui.paint(), s, now).expect("writing to a Vec cannot fail");
    String::from_utf8(out).expect("the table is UTF-8")
}

/// Same, into any writer.
pub fn render_to(w: &mut impl Write, p: Paint, s: &Snapshot, now: u64) -> io::Result<()> {
    let state = match s.state {
        RunState::Running => format!("running (pid {})", s.pid.unwrap_or(0)),
        RunState::Planned => "planned, not submitted".into(),
        RunState::Detached => format!(
            "batches out, no process watching (run `batchgrader resume {}`)",
            s.job
        ),
        RunState::Halted
            if s.message
                .as_deref()
                .is_some_and(|m| m.contains(CANCELLED_BY)) =>
        {
            "cancelled".into()
        }
        RunState::Halted => "halted by policy".into(),
        RunState::Finished => "finished".into(),
    };
    writeln!(w, "{} {}  {}", p.bold("job"), p.bold(&s.job), state)?;
    if s.state == RunState::Running
        && let Some(line) = outage_line(&s.job, s.outage_since, now)
    {
        writeln!(w, "  {line}")?;
    }
    if s.state == RunState::Running
        && let Some((step, since)) = &s.step
    {
        writeln!(
            w,
            "  now: {step} (for {})",
            short_duration(now.saturating_sub(*since))
        )?;
    }
    let t = &s.totals;
    let c = row_counts(t, &s.units);
    writeln!(
        w,
        "  rows {}: {} answered{}, {}{} failed, {} pending{}",
        num(t.rows),
        num(c.answered),
        // "graded" in the summary and the output is an answer that
        // parsed: the ones that did not are said apart here too.
        if t.parse_failures > 0 {
            format!(" ({} did not parse)", num(t.parse_failures))
        } else {
            String::new()
        },
        if c.collecting > 0 {
            format!(
                "{} done at the provider, not collected yet, ",
                num(c.collecting)
            )
        } else {
            String::new()
        },
        num(c.failed),
        num(c.pending),
        if t.already_done > 0 {
            format!(" ({} from earlier runs)", num(t.already_done))
        } else {
            String::new()
        }
    )?;
    writeln!(
        w,
        "  cost {} so far{}",
        usd(s.actual_cost_usd),
        s.estimated_cost_usd
            .map(|e| format!(", estimated {}", usd(e)))
            .unwrap_or_default()
    )?;
    if let Some(r) = receipt_line(&s.receipt) {
        writeln!(w, "  {r}")?;
    }
    if let Some(d) = &s.deadline
        && s.state != RunState::Finished
    {
        writeln!(w, "  {}", deadline_line(d, now))?;
    }
    if let Some(d) = &s.direct {
        for line in direct_lines(d, now) {
            writeln!(w, "  {line}")?;
        }
    }
    if !s.units.is_empty() {
        writeln!(
            w,
            "{}",
            p.dim(&format!(
                "  {:>5} {:>3}  {:<26} {:>19} {:>10} {:>10} {:>9}  {}",
                "chunk", "try", "state", "done/requests", "tokens", "size", "cost", "elapsed"
            ))
        )?;
        for u in &s.units {
            writeln!(
                w,
                "  {:>5} {:>3}  {:<26} {:>19} {:>10} {:>10} {:>9}  {}",
                u.id,
                u.attempt,
                phase_word(u, now, s.state == RunState::Running),
                format!("{}/{}", num(u.completed + u.failed), num(u.requests)),
                num(u.tokens),
                human_bytes(u.bytes),
                usd(u.cost_usd),
                elapsed(u, now)
            )?;
        }
        for u in &s.units {
            if let Some(b) = &u.backoff {
                writeln!(
                    w,
                    "  chunk {}: {} failing for {}: {}",
                    u.id,
                    b.step,
                    secs(now.saturating_sub(b.since)),
                    b.last_error
                )?;
            }
        }
    }
    if let Some(m) = &s.message {
        writeln!(w, "  {m}")?;
    }
    if let Some(q) = &s.quality {
        crate::agreement::text::write_quality(
            w,
            p,
            &s.job,
            &q.agreement,
            q.gate.as_ref(),
            &q.failures,
        )?;
    }
    if let Some(p) = &s.output_path {
        writeln!(w, "  output {p}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_790_000_000;

    fn unit(id: u32, phase: Phase, remote: Option<&str>, done: u64) -> UnitStatus {
        UnitStatus {
            id,
            attempt: 1,
            phase,
            batch_id: remote.map(|_| format!("batch_{id:03}")),
            remote_status: remote.map(str::to_string),
            requests: 20_000,
            completed: done,
            failed: 0,
            bytes: 8_240_000,
            tokens: 1_940_000,
            input_tokens: 0,
            output_tokens: 0,
            cost_usd: 0.0,
            submitted_at: remote.map(|_| NOW - 3_725),
            ended_at: None,
            backoff: None,
        }
    }

    fn running() -> Snapshot {
        let mut merged = unit(1, Phase::Merged, Some("completed"), 19_990);
        merged.failed = 10;
        merged.ended_at = Some(NOW - 600);
        merged.input_tokens = 1_939_000;
        merged.output_tokens = 40_000;
        merged.cost_usd = 0.1574;
        let mut parked = unit(3, Phase::Planned, None, 0);
        parked.backoff = Some(Backoff {
            step: "upload".into(),
            failures: 3,
            since: NOW - 125,
            retry_at: NOW + 40,
            last_error: "upload file failed after 4 attempts: HTTP 503".into(),
        });
        Snapshot {
            job: "essays".into(),
            state: RunState::Running,
            pid: Some(4242),
            updated_at: NOW - 2,
            started_at: Some(NOW - 3_800),
            model: "gpt-4o-mini".into(),
            totals: Totals {
                rows: 61_200,
                to_grade: 60_000,
                already_done: 1_200,
                succeeded: 19_990,
                parse_failures: 37,
                failed: 10,
                pending: 40_000,
            },
            estimated_cost_usd: Some(0.4216),
            actual_cost_usd: 0.1574,
            output_path: None,
            message: None,
            receipt: Receipt {
                paid_usd: 0.1574,
                standard_usd: 0.3148,
                saved_usd: 0.1574,
                cache_saved_usd: None,
            },
            outage_since: Some(NOW - 180),
            step: None,
            units: vec![
                merged,
                unit(2, Phase::Submitted, Some("in_progress"), 12_345),
                parked,
            ],
            direct: None,
            quality: None,
            deadline: None,
        }
    }

    #[test]
    fn the_rows_line_adds_up_and_shows_what_the_table_shows() {
        let t = |succeeded, failed, pending| Totals {
            rows: 5_000,
            to_grade: 5_000,
            already_done: 0,
            succeeded,
            parse_failures: 0,
            failed,
            pending,
        };
        let u = |phase, requests, completed, failed| UnitStatus {
            requests,
            failed,
            ..unit(1, phase, Some("x"), completed)
        };
        // The case: two chunks of 1,000 done at the provider, one
        // merged, 488 of the other merged so far... (totals, units, want
        // answered, collecting, failed, pending)
        type Row = (Totals, Vec<UnitStatus>, (u64, u64, u64, u64));
        let table: Vec<Row> = vec![
            (
                t(1_488, 0, 3_512),
                vec![
                    u(Phase::Merged, 1_000, 1_000, 0),
                    u(Phase::Downloaded, 1_000, 1_000, 0),
                    u(Phase::Submitted, 1_000, 0, 0),
                ],
                (1_488, 1_000, 0, 2_512),
            ),
            // A running chunk's progress counts, failures too.
            (
                t(0, 0, 5_000),
                vec![u(Phase::Submitted, 1_250, 400, 5)],
                (0, 405, 0, 4_595),
            ),
            // Never more than is pending, whatever the table says.
            (
                t(4_990, 5, 5),
                vec![u(Phase::Ended, 1_000, 1_000, 0)],
                (4_990, 5, 5, 0),
            ),
            // A count over the chunk's size counts as its size.
            (
                t(0, 0, 5_000),
                vec![u(Phase::Submitted, 100, 150, 0)],
                (0, 100, 0, 4_900),
            ),
            (t(5_000, 0, 0), vec![], (5_000, 0, 0, 0)),
        ];
        for (totals, units, want) in table {
            let c = row_counts(&totals, &units);
            assert_eq!((c.answered, c.collecting, c.failed, c.pending), want);
            assert_eq!(
                c.answered + c.collecting + c.failed + c.pending,
                totals.rows,
                "{c:?}"
            );
        }
    }

    #[test]
    fn table_of_a_running_job_with_a_parked_chunk_and_an_outage() {
        let text = render(&Ui::plain(), &running(), NOW);
        assert!(text.contains("retry in 40s (3 failures)"), "{text}");
        insta::assert_snapshot!(text);
    }

    #[test]
    fn a_parked_chunk_past_its_retry_time_says_retrying() {
        let mut s = running();
        s.units[2].backoff.as_mut().unwrap().failures = 1;
        let text = render(&Ui::plain(), &s, NOW + 41);
        assert!(text.contains("retrying (1 failure) "), "{text}");
    }

    #[test]
    fn no_outage_line_once_nobody_is_running() {
        let mut s = running();
        s.state = RunState::Detached;
        let text = render(&Ui::plain(), &s, NOW);
        assert!(!text.contains("provider not answering"), "{text}");
        assert!(!text.contains("retry in"), "{text}");
        assert!(text.contains("to retry (3 failures)"), "{text}");
    }

    #[test]
    fn outage_lines() {
        assert_eq!(outage_line("j", None, 100), None);
        assert_eq!(outage_line("j", Some(95), 100), None);
        let line = outage_line("j", Some(0), 200).unwrap();
        assert!(
            line.starts_with("provider not answering for 3m, retrying"),
            "{line}"
        );
        assert!(line.contains("Ctrl-C stops, `batchgrader resume j` continues"));
        let cases = [
            (5, "5s"),
            (60, "1m"),
            (185, "3m"),
            (3600, "1h"),
            (7500, "2h 5m"),
        ];
        for (secs, want) in cases {
            assert_eq!(short_duration(secs), want);
        }
    }

    #[test]
    fn the_receipt_says_what_the_cache_saved_beside_the_batch_discount() {
        let r = |cache| Receipt {
            paid_usd: 0.5,
            standard_usd: 1.0,
            saved_usd: 0.5,
            cache_saved_usd: cache,
        };
        let base = "paid $0.5000 at batch prices; $1.00 at standard prices; saved $0.5000";
        let cases = [
            (None, base.to_string()),
            (
                Some(0.25),
                format!("{base}; the prompt cache saved $0.2500"),
            ),
            (
                Some(-0.1),
                format!("{base}; the prompt cache cost $0.1000 more"),
            ),
            (Some(0.0), format!("{base}; the prompt cache saved $0.0000")),
        ];
        for (cache, want) in cases {
            assert_eq!(receipt_line(&r(cache)).unwrap(), want, "{cache:?}");
        }
    }

    #[test]
    fn no_receipt_or_outage_line_until_there_is_one() {
        let mut s = running();
        s.receipt = Receipt::default();
        s.outage_since = None;
        s.units.clear();
        s.state = RunState::Finished;
        s.totals.succeeded = 59_990;
        s.totals.pending = 0;
        s.output_path = Some("out/essays.graded.csv".into());
        insta::assert_snapshot!(render(&Ui::plain(), &s, NOW));
    }
}
