//! The per-user registry of jobs at the command edge: recording where a job
//! was planned and applied, refusing to plan it again somewhere else, and
//! finding a job's state folder when none was named. The decisions are
//! `crate::registry`'s pure functions; here are the file and the messages.

use std::path::{Path, PathBuf};

use super::job;
use crate::error::{Error, Result};
use crate::registry::{self, Entry, Event, Home};
use crate::settings::Global;
use crate::state::Layout;
use crate::ui::Ui;

/// Note in the registry that `job` of `spec_file` was planned or applied in
/// `state_root`. A registry that cannot be written costs a warning, never
/// the run: it only helps find the job later.
pub(super) fn record(job: &str, spec_file: &Path, state_root: &Path, event: Event, ui: &Ui) {
    let Some(path) = registry::default_location() else {
        return;
    };
    let entry = Entry {
        job: job.to_string(),
        spec: registry::normal(spec_file),
        state: registry::normal(state_root),
        event,
        at: crate::state::now_secs(),
    };
    if let Err(e) = registry::append(&path, &entry) {
        ui.warn(&format!(
            "could not note job `{job}` in the job registry {}: {e}; `status` and `resume` from another folder will need --state {}",
            path.display(),
            entry.state.display()
        ));
    }
}

/// The folders where the registry saw `job` (of `spec`, when given) and
/// whose job folder is still there, the most recent first.
fn alive(job: Option<&str>, spec: Option<&Path>) -> Vec<Home> {
    let Some(path) = registry::default_location() else {
        return Vec::new();
    };
    // An unreadable registry finds nothing: the commands then work from the
    // state folder alone, as they did before there was one.
    let entries = registry::read(&path).unwrap_or_default();
    registry::homes(&entries, job, spec)
        .into_iter()
        .filter(|h| Layout::is_job_dir(&h.state.join(&h.job)))
        .collect()
}

/// Stop `plan`/`apply SPEC` before anything is read or sent when the job of
/// this spec has state in another folder and none here: planning here
/// would grade every row again, and pay for it twice.
pub(super) fn refuse_elsewhere(g: &Global, job: &str, spec_file: &Path) -> Result<()> {
    let here = registry::normal(&g.state_root);
    let holds = Layout::is_job_dir(&here.join(job));
    let homes = alive(Some(job), Some(&registry::normal(spec_file)));
    let Some(home) = registry::elsewhere(&here, holds, &homes, g.new_state) else {
        return Ok(());
    };
    Err(Error::usage_with_hint(
        format!(
            "job `{job}` already has state in {}, not in {}: planning it here would grade every row again and pay for them twice",
            home.state.display(),
            here.display()
        ),
        format!(
            "continue where the job lives: `{}`; or add --new-state to start it over in {} on purpose",
            job::with_state(&g.typed, &home.state),
            here.display()
        ),
    ))
}

/// The state folder a command that takes `[JOB]` works in: the one named
/// (--state, BATCHGRADER_STATE), else `./state` when it holds the job (or,
/// with no job named, any job), else the one folder where the registry saw
/// the job (or, with no job named, a job of a spec or state under the
/// current folder). Several such folders: the user is asked to choose,
/// with the command for each.
pub(super) fn state_for(
    g: &Global,
    named: Option<&str>,
    verb: job::Verb,
    ui: &Ui,
) -> Result<Global> {
    if g.state_explicit {
        return Ok(g.clone());
    }
    let here_has = match named {
        Some(n) => Layout::is_job_dir(&g.state_root.join(n)),
        None => std::fs::read_dir(&g.state_root)
            .map(|rd| rd.flatten().any(|e| Layout::is_job_dir(&e.path())))
            .unwrap_or(false),
    };
    if here_has {
        return Ok(g.clone());
    }
    let homes = alive(named, None);
    let homes: Vec<&Home> = match named {
        Some(_) => homes.iter().collect(),
        None => {
            let cwd = registry::normal(Path::new("."));
            registry::under(&homes, &cwd)
        }
    };
    let mut folders: Vec<PathBuf> = Vec::new();
    for h in &homes {
        if !folders.contains(&h.state) {
            folders.push(h.state.clone());
        }
    }
    match folders.as_slice() {
        [] => Ok(g.clone()),
        [only] => {
            ui.info(&ui.dim(&format!(
                "Using the state folder {} (where {} planned, as the job registry records).",
                only.display(),
                match named {
                    Some(n) => format!("job `{n}` was"),
                    None => "the jobs of this folder were".to_string(),
                }
            )));
            Ok(Global {
                state_root: only.clone(),
                state_explicit: true,
                ..g.clone()
            })
        }
        _ => {
            let lines: Vec<String> = homes
                .iter()
                .map(|h| {
                    let words = job::words_for(&g.typed, verb, &h.job, named);
                    format!("  {}  {}", h.job, job::with_state(&words, &h.state))
                })
                .collect();
            Err(Error::usage_with_hint(
                format!(
                    "no job in {}, and the job registry knows {} in other folders; say which",
                    registry::normal(&g.state_root).display(),
                    match named {
                        Some(n) => format!("job `{n}`"),
                        None => "jobs of this folder".to_string(),
                    }
                ),
                format!("run one of:\n{}", lines.join("\n")),
            ))
        }
    }
}
