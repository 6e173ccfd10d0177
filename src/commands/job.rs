//! Finding the job a command means, and what its state holds.

use std::path::Path;

use crate::error::{Error, Result};
use crate::spec::{self, CheckedSpec};
use crate::state::{JobStore, PlanRecord};

/// The job a command means: the one named, else the only job in the state folder.
pub fn resolve(state_root: &Path, job: Option<&str>) -> Result<String> {
    if let Some(j) = job {
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
    let job = store
        .job()?
        .ok_or_else(|| Error::usage("the job has no saved spec; plan it first"))?;
    Ok(spec::from_saved(Path::new(&job.spec_file), job.spec)?)
}

/// The job's current plan, or an error saying how to make one.
pub fn current_plan(store: &JobStore, job: &str) -> Result<PlanRecord> {
    store.plan()?.ok_or_else(|| {
        Error::usage_with_hint(
            format!("job `{job}` has no plan yet"),
            "run `batchgrader plan SPEC` or `batchgrader apply SPEC`",
        )
    })
}
