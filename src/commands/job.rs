//! Finding the job a command means, and what its state holds.

use std::path::Path;

use crate::error::{Error, Result};
use crate::spec::{self, CheckedSpec};
use crate::state::{JobStore, PlanRecord, StateError};

/// The job a command means: the one named, else the only job in the state folder.
pub fn resolve(state_root: &Path, job: Option<&str>) -> Result<String> {
    if let Some(j) = job {
        // The spec's rule for names: a job can never be a path that leaves
        // the state folder (`../other/job`).
        let valid = !j.is_empty()
            && j.len() <= 64
            && j.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !valid {
            return Err(Error::usage_with_hint(
                format!("`{j}` is not a job name: names are 1 to 64 of a-z, 0-9, `_` and `-`"),
                format!(
                    "name a job of {} (see its folders), or pass --state to use another state folder",
                    state_root.display()
                ),
            ));
        }
        return Ok(j.to_string());
    }
    let mut jobs: Vec<String> = std::fs::read_dir(state_root)
        .map(|rd| {
            rd.flatten()
                .filter(|e| crate::state::Layout::is_job_dir(&e.path()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    jobs.sort();
    match jobs.len() {
        1 => Ok(jobs.remove(0)),
        0 => Err(Error::usage_with_hint(
            format!("no job in {}", state_root.display()),
            "run `batchgrader plan SPEC` or `batchgrader apply SPEC` first, or pass --state",
        )),
        _ => Err(Error::usage_with_hint(
            format!(
                "{} holds several jobs ({}); say which one",
                state_root.display(),
                jobs.join(", ")
            ),
            "pass the job name, e.g. `batchgrader status NAME`",
        )),
    }
}

/// The job's spec as saved by `plan`, with paths resolved as they were then.
pub fn saved_spec(store: &JobStore) -> Result<CheckedSpec> {
    let Some(job) = store.job()? else {
        if let Some(e) = lost_records(store) {
            return Err(e.into());
        }
        return Err(Error::usage_with_hint(
            "the job has no saved spec: it was never planned (or its first plan was stopped)",
            "run `batchgrader plan SPEC` or `batchgrader apply SPEC`",
        ));
    };
    let folder = store
        .dir()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned());
    if folder.as_deref() != Some(job.name.as_str()) {
        // A database copied in from another job's folder.
        return Err(StateError::Damaged {
            job: folder.unwrap_or_default(),
            file: store.dir().join("db"),
            message: format!(
                "it holds the records of job `{}`, not of this folder's job",
                job.name
            ),
            repair: format!(
                "put the job's own db/ back, or move this folder to {}",
                store.dir().with_file_name(&job.name).display()
            ),
        }
        .into());
    }
    Ok(spec::from_saved(Path::new(&job.spec_file), job.spec)?)
}

/// The job's current plan, or an error saying how to make one. Its files
/// are checked: a missing or cut one is damage to the state.
pub fn current_plan(store: &JobStore, job: &str) -> Result<PlanRecord> {
    let Some(plan) = store.plan()? else {
        if let Some(e) = lost_records(store) {
            return Err(e.into());
        }
        return Err(Error::usage_with_hint(
            format!("job `{job}` has no plan yet"),
            "run `batchgrader plan SPEC` or `batchgrader apply SPEC`",
        ));
    };
    let spec_file = store
        .job()?
        .map_or_else(|| "SPEC".to_string(), |j| j.spec_file);
    store.check_plan_files(&plan, &spec_file)?;
    Ok(plan)
}

/// A database without the job's records in a folder that holds what only
/// a run writes: the database was lost or damaged, and batches may be out
/// that nothing records any more. Plan files alone (`chunks/`) are no such
/// sign: a first plan killed after moving its files in and before
/// recording itself leaves them, no run can have started, and planning
/// again replaces them.
pub(super) fn lost_records(store: &JobStore) -> Option<StateError> {
    let dir = store.dir();
    let traces: Vec<&str> = ["events.jsonl", "outcomes.jsonl", "status.json", "results"]
        .into_iter()
        .filter(|f| dir.join(f).exists())
        .collect();
    if traces.is_empty() {
        return None;
    }
    Some(StateError::Damaged {
        job: dir
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        file: dir.join("db"),
        message: format!(
            "the database holds no record of the job, but the folder holds its {}",
            traces.join(", ")
        ),
        // `apply SPEC` refuses this same folder (a plan over it could send
        // again what is still out), so the way on is a folder of its own.
        repair: format!(
            "restore the db/ folder from a backup; without one, the batches still out are not known any more: once none of this job's batches is running at the provider, move {} aside and run `batchgrader apply SPEC` (every row is sent again; the old folder keeps its answers in outcomes.jsonl)",
            dir.display()
        ),
    })
}
