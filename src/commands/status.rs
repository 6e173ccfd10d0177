//! `status [JOB]`: the snapshot `apply` keeps, read without touching the
//! job's lock, so it answers while `apply` runs.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use super::job;
use crate::error::Result;
use crate::exit::{self, Code};
use crate::settings::Global;
use crate::state::{self, JobStore, Layout};
use crate::status::{self, RunState, Snapshot};
use crate::ui::{Ui, print_json};

pub fn run(g: &Global, job: Option<&str>, watch: bool, exit_status: bool, ui: &Ui) -> Result<Code> {
    let g = &super::homes::state_for(g, job, job::Verb::Status, ui)?;
    let job = job::resolve(g, job, job::Verb::Status)?;
    let layout = Layout::new(&g.state_root, &job);
    loop {
        if let Some(p) = status::read_planning(&layout).filter(|p| job::process_alive(p.pid)) {
            // A plan holds the job's lock; the marker says how far it is.
            if ui.json {
                print_json(&serde_json::json!({
                    "job": job,
                    "state": "planning",
                    "pid": p.pid,
                    "started_at": p.started_at,
                    "read_bytes": p.read_bytes,
                    "total_bytes": p.total_bytes,
                }));
            }
            if !ui.json || watch {
                ui.show(|w| writeln!(w, "{}", p.line(&job, state::now_secs())));
            }
            if !watch {
                return Ok(if exit_status {
                    Code::Running
                } else {
                    Code::Success
                });
            }
            std::thread::sleep(Duration::from_secs(2));
            continue;
        }
        let snap = read_snapshot(&g.state_root, &job, &layout)?;
        if ui.json {
            print_json(&snap);
        } else if watch && ui.tty {
            let _ = console::Term::stderr().clear_screen();
        }
        if !ui.json || watch {
            let now = state::now_secs();
            ui.show(|w| status::render_to(w, ui.paint(), &snap, now));
        }
        let done = matches!(snap.state, RunState::Finished | RunState::Halted);
        if !watch || done {
            return Ok(if exit_status {
                exit::for_run_state(
                    snap.state,
                    snap.quality
                        .as_ref()
                        .and_then(|q| q.gate.as_ref())
                        .is_some_and(|g| g.failed()),
                )
            } else {
                Code::Success
            });
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

fn read_snapshot(state_root: &Path, job: &str, layout: &Layout) -> Result<Snapshot> {
    // `status.json` is derived from the database: missing or unreadable, it
    // is rebuilt from the database, which every other command trusts (a
    // finished job once showed as "planned, 0 answered" without it).
    let derived = match status::read(layout) {
        Ok(found) => found,
        Err(_) => {
            return from_database(state_root, job).map(|mut snap| {
                snap.message = Some(format!(
                    "{} is damaged; this status is rebuilt from the database",
                    layout.status().display()
                ));
                snap
            });
        }
    };
    if let Some(mut snap) = derived {
        if snap.state == RunState::Running && !snap.pid.is_some_and(job::process_alive) {
            snap.state = RunState::Detached;
            snap.message = Some(format!(
                "the process that was applying the job (pid {}) is gone; run `batchgrader resume {job}`",
                snap.pid.unwrap_or(0)
            ));
        }
        return Ok(snap);
    }
    from_database(state_root, job)
}

/// The snapshot the database gives: where every request stands, the
/// batches, the spend they report.
fn from_database(state_root: &Path, job: &str) -> Result<Snapshot> {
    let store = JobStore::open_existing(state_root, job)?;
    let plan = job::current_plan(&store, job)?;
    let spec = job::saved_spec(&store)?;
    let tally = crate::apply::tally_of(&store, &spec, plan.generation)?;
    let units = store.units(plan.generation)?;
    let spent: f64 = units.iter().map(|u| u.cost_usd).sum();
    let state = decide_state(tally.pending, tally.settled(), units.len());
    let mut snap = crate::apply::snapshot_of(job, &plan, &tally, state, plan.created_at, spent);
    snap.message = Some(match state {
        RunState::Planned => format!(
            "planned; run `batchgrader apply {}` to submit",
            spec.file.display()
        ),
        RunState::Finished => "finished".to_string(),
        _ => format!("not finished; run `batchgrader resume {job}` to continue"),
    });
    snap.output_path = (state == RunState::Finished && spec.output_path.exists())
        .then(|| spec.output_path.display().to_string());
    Ok(snap)
}

/// Where a job stands from its counts alone: nothing pending is finished;
/// nothing answered and no batch is planned; anything else waits for
/// `resume`.
fn decide_state(pending: u64, settled: u64, units: usize) -> RunState {
    match (pending, settled, units) {
        (0, _, _) => RunState::Finished,
        (_, 0, 0) => RunState::Planned,
        _ => RunState::Detached,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_from_the_database_alone() {
        let cases = [
            ((0, 10, 2), RunState::Finished),
            ((0, 10, 0), RunState::Finished),
            ((10, 0, 0), RunState::Planned),
            ((10, 0, 1), RunState::Detached),
            ((4, 6, 0), RunState::Detached),
        ];
        for ((pending, settled, units), want) in cases {
            assert_eq!(
                decide_state(pending, settled, units),
                want,
                "{pending} {settled} {units}"
            );
        }
    }
}
