//! `status [JOB]`: the snapshot `apply` keeps, read without touching the
//! job's lock, so it answers while `apply` runs.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use super::job;
use crate::error::{Error, Result};
use crate::exit::{self, Code};
use crate::settings::Global;
use crate::state::{self, JobStore, Layout};
use crate::status::{self, RunState, Snapshot};
use crate::ui::{Ui, print_json};

pub fn run(g: &Global, job: Option<&str>, watch: bool, exit_status: bool, ui: &Ui) -> Result<Code> {
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
    if let Some(mut snap) =
        status::read(layout).map_err(|e| Error::io("read", layout.status(), e))?
    {
        if snap.state == RunState::Running && !snap.pid.is_some_and(job::process_alive) {
            snap.state = RunState::Detached;
            snap.message = Some(format!(
                "the process that was applying the job (pid {}) is gone; run `batchgrader resume {job}`",
                snap.pid.unwrap_or(0)
            ));
        }
        return Ok(snap);
    }
    // Planned but never applied: build the snapshot from the plan.
    let store = JobStore::open_existing(state_root, job)?;
    let plan = job::current_plan(&store, job)?;
    Ok(Snapshot {
        job: job.to_string(),
        state: RunState::Planned,
        pid: None,
        updated_at: plan.created_at,
        started_at: None,
        model: plan.model.clone(),
        totals: status::Totals {
            rows: plan.rows,
            to_grade: plan.outstanding,
            already_done: plan.already_done,
            succeeded: 0,
            parse_failures: 0,
            failed: 0,
            pending: plan.outstanding,
        },
        estimated_cost_usd: plan
            .estimate
            .as_ref()
            .map(|e| e.expected.or(e.high).unwrap_or(e.low)),
        actual_cost_usd: 0.0,
        output_path: None,
        message: Some(format!(
            "planned; run `batchgrader resume {job}` (or `batchgrader apply SPEC`) to submit"
        )),
        receipt: status::Receipt::default(),
        outage_since: None,
        step: None,
        units: vec![],
        direct: None,
        quality: None,
    })
}
