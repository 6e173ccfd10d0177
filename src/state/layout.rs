//! Every path of a job folder, named once. Nothing outside `state` builds a
//! path inside `<state>/<job>/` by hand.
//!
//! ```text
//! <state>/usage.jsonl                         the usage ledger, across jobs
//! <state>/<job>/db/                           sled: job, plan, units
//!               lock                          held while a command works on the job
//!               outcomes.jsonl                results and failures by fingerprint
//!               chunks/plan-<g>/chunk-NNNNN.jsonl     the plan's request files
//!               chunks/plan-<g>/retry-<a>-NNNNN.jsonl retry chunks of attempt a
//!               chunks/plan-<g>/requests.idx|.keys    per-row request records
//!               tmp-plan-<g>/                 a plan being written
//!               results/plan-<generation>-unit-<id>-<submit>-<name>.jsonl  fetched result files
//!               status.json                   the snapshot `status` reads
//!               events.jsonl                  what happened, when
//!               simulated/                    the in-process simulated provider's data
//! ```

use std::path::{Path, PathBuf};

/// The layout of one job folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    root: PathBuf,
    dir: PathBuf,
}

impl Layout {
    pub fn new(state_root: &Path, job: &str) -> Layout {
        Layout {
            root: state_root.to_path_buf(),
            dir: state_root.join(job),
        }
    }

    /// The state folder the job lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The job folder itself.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn db(&self) -> PathBuf {
        self.dir.join("db")
    }

    /// Where the snapshot is written before it replaces `status.json`.
    pub fn status_tmp(&self) -> PathBuf {
        self.dir.join(".status.json.tmp")
    }

    pub fn lock(&self) -> PathBuf {
        self.dir.join("lock")
    }

    pub fn status(&self) -> PathBuf {
        self.dir.join("status.json")
    }

    /// Present while a `plan` works on the job (who, since when, how far),
    /// so `status` can say so while the plan holds the job's lock.
    pub fn planning(&self) -> PathBuf {
        self.dir.join("planning.json")
    }

    pub fn events(&self) -> PathBuf {
        self.dir.join("events.jsonl")
    }

    /// The usage ledger that `costs` reads, shared by every job of the root.
    pub fn ledger(&self) -> PathBuf {
        Layout::ledger_in(&self.root)
    }

    pub fn results_dir(&self) -> PathBuf {
        self.dir.join("results")
    }

    /// A fetched result file of one submit of a unit of plan `generation`.
    /// Unit ids start again at 1 in every plan: without the generation, a
    /// new plan's unit would find (and skip downloading over) the old plan's
    /// file, and merge answers to other requests.
    pub fn result_file(&self, generation: u64, unit: u32, submit: u32, name: &str) -> PathBuf {
        self.results_dir().join(format!(
            "plan-{generation}-unit-{unit}-{submit}-{name}.jsonl"
        ))
    }

    pub fn simulated(&self) -> PathBuf {
        self.dir.join("simulated")
    }

    pub fn chunks_root(&self) -> PathBuf {
        self.dir.join("chunks")
    }

    /// The folder of a plan generation: its chunk and request files.
    pub fn plan_dir(&self, generation: u64) -> PathBuf {
        self.chunks_root().join(format!("plan-{generation}"))
    }

    /// Where a plan is written before it becomes the plan.
    pub fn plan_scratch(&self, generation: u64) -> PathBuf {
        self.dir.join(format!("tmp-plan-{generation}"))
    }

    /// Whether a name in the job folder is a plan scratch folder.
    pub fn is_plan_scratch(name: &str) -> bool {
        name.starts_with("tmp-plan-")
    }

    /// The file name of a plan chunk inside its plan folder.
    pub fn chunk_name(index: u32) -> String {
        format!("chunk-{index:05}.jsonl")
    }

    /// A plan chunk's file, relative to the job folder (as unit records keep it).
    pub fn chunk_rel(generation: u64, index: u32) -> String {
        format!("chunks/plan-{generation}/{}", Layout::chunk_name(index))
    }

    /// The usage ledger of a state root (what `costs` reads).
    pub fn ledger_in(state_root: &Path) -> PathBuf {
        state_root.join("usage.jsonl")
    }

    /// Whether `dir` (an entry of a state root) is a job folder.
    pub fn is_job_dir(dir: &Path) -> bool {
        dir.join("db").is_dir()
    }

    /// A retry chunk's file, relative to the job folder.
    pub fn retry_chunk_rel(generation: u64, attempt: u32, id: u32) -> String {
        format!("chunks/plan-{generation}/retry-{attempt}-{id:05}.jsonl")
    }

    /// A path the unit records keep relative to the job folder, made whole.
    pub fn resolve(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let l = Layout::new(Path::new("/s"), "job");
        assert_eq!(l.dir(), Path::new("/s/job"));
        assert_eq!(l.ledger(), Path::new("/s/usage.jsonl"));
        assert_eq!(
            l.result_file(5, 3, 2, "output"),
            Path::new("/s/job/results/plan-5-unit-3-2-output.jsonl")
        );
        assert_eq!(
            l.resolve(&Layout::chunk_rel(4, 12)),
            Path::new("/s/job/chunks/plan-4/chunk-00012.jsonl")
        );
        assert_eq!(
            l.resolve(&Layout::retry_chunk_rel(4, 2, 7)),
            l.plan_dir(4).join("retry-2-00007.jsonl")
        );
    }
}
