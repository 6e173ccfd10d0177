//! What the command line asked for, as plain values. `cli` builds these from
//! its clap types; commands take them and never see clap.

use std::path::PathBuf;
use std::time::Duration;

use crate::simulate::SimConfig;
use crate::spec::Format;
use crate::split::SplitLimits;

/// Settings every command shares.
#[derive(Debug, Clone)]
pub struct Global {
    /// Folder holding every job's state.
    pub state_root: PathBuf,
    /// Named by --state or BATCHGRADER_STATE (else the default `./state`,
    /// and the registry may point a job's command elsewhere).
    pub state_explicit: bool,
    /// `--new-state`: plan here even though the job has state elsewhere.
    pub new_state: bool,
    /// Price table to use instead of the default one.
    pub pricing: Option<PathBuf>,
    pub output: OutputMode,
    /// The words typed after the program name, as typed: hints that name
    /// a job repeat the user's own command with the job put in.
    pub typed: Vec<String>,
}

/// Where and how results are shown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutputMode {
    /// Machine-readable JSON on stdout; human text stays on stderr.
    pub json: bool,
    /// Only errors on stderr.
    pub quiet: bool,
    pub no_color: bool,
}

/// A spec or data file whose rows are counted (`tokens`, `split`).
#[derive(Debug, Clone)]
pub struct CountTarget {
    pub path: PathBuf,
    pub model: Option<String>,
    pub column: Option<String>,
    pub format: Option<Format>,
}

/// `apply [SPEC]` and `resume [JOB]`.
#[derive(Debug, Clone)]
pub struct ApplySettings {
    /// The spec to plan and apply (`apply SPEC`).
    pub spec: Option<PathBuf>,
    /// The job to continue (`resume JOB`).
    pub job: Option<String>,
    pub detach: bool,
    /// Never ask before submitting.
    pub yes: bool,
    /// `resume`: never re-plan, and keep a cancelled job cancelled.
    pub resume: bool,
    /// `--retry-failed`: send again the rows whose last outcome is a final API failure.
    pub retry_failed: bool,
    /// `--retry-parse-failures`: send again the rows whose answer did not parse.
    pub retry_parse_failures: bool,
    /// `--sample N`: rehearse on N rows in the direct lane, then stop.
    pub sample: Option<u64>,
    /// `--seed`: which rows the sample takes.
    pub seed: u64,
}

/// One command with its arguments.
#[derive(Debug, Clone)]
pub enum Invocation {
    Validate {
        spec: PathBuf,
    },
    Schema,
    Plan {
        spec: PathBuf,
        detailed_exitcode: bool,
    },
    Apply(ApplySettings),
    Status {
        job: Option<String>,
        watch: bool,
        exit_status: bool,
    },
    Cancel {
        job: Option<String>,
    },
    Costs {
        since: Option<Duration>,
    },
    Export {
        job: Option<String>,
        out: Option<PathBuf>,
        /// Only rows where judge and gold differ.
        disagreements: bool,
    },
    Report {
        job: Option<String>,
        out: Option<PathBuf>,
    },
    SimulateServer {
        config: SimConfig,
        port: u16,
    },
    Tokens {
        target: CountTarget,
        limit: Option<u64>,
    },
    Split {
        target: CountTarget,
        limits: SplitLimits,
        out_dir: PathBuf,
    },
}
