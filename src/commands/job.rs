//! Finding the job a command means, and what its state holds.

use std::path::Path;

use crate::error::{Error, Result};
use crate::settings::Global;
use crate::spec::{self, CheckedSpec};
use crate::state::Layout;
use crate::state::{JobStore, PlanRecord, StateError};
use crate::status::{self, RunState};

/// A command that takes `[JOB]`, for what it may fall back on when no job
/// is named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Status,
    Resume,
    Cancel,
    Export,
    Report,
}

impl Verb {
    /// The word typed for the command.
    pub fn word(self) -> &'static str {
        match self {
            Verb::Status => "status",
            Verb::Resume => "resume",
            Verb::Cancel => "cancel",
            Verb::Export => "export",
            Verb::Report => "report",
        }
    }
}

/// One job of the state folder, as the choice sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFacts {
    pub name: String,
    /// A live process holds it (an `apply`, `resume` or `plan`).
    pub running: bool,
    /// When a run of it last started (unix seconds); `None` if never applied.
    pub last_applied: Option<u64>,
}

/// Why no job could be chosen: the message and the hint of a usage error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub message: String,
    pub hint: String,
}

/// The job a command means, decided over plain data. Named: that job, if
/// the state folder holds it (else the nearest name). Not named: the one
/// job a live process holds, else the only job, else (for `status`, which
/// only reads) the one applied last; otherwise every job with the command
/// that works for it. `typed` is the command line as typed, for those
/// commands; `state` names the folder in messages.
pub fn choose(
    jobs: &[JobFacts],
    named: Option<&str>,
    verb: Verb,
    typed: &[String],
    state: &str,
) -> std::result::Result<String, Refusal> {
    let names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
    if let Some(n) = named {
        if names.contains(&n) {
            return Ok(n.to_string());
        }
        let hint = match crate::suggest::closest(n, &names) {
            Some(near) => format!(
                "did you mean `{near}`? `{}`",
                command_for(typed, verb, near, Some(n))
            ),
            None if names.is_empty() => {
                "run `batchgrader plan SPEC` or `batchgrader apply SPEC` first, or pass --state"
                    .to_string()
            }
            None => format!("the jobs here: {}", names.join(", ")),
        };
        return Err(Refusal {
            message: format!("no job `{n}` in {state}"),
            hint,
        });
    }
    let running: Vec<&JobFacts> = jobs.iter().filter(|j| j.running).collect();
    if running.len() == 1 {
        return Ok(running[0].name.clone());
    }
    if running.is_empty() {
        match jobs {
            [] => {
                return Err(Refusal {
                    message: format!("no job in {state}"),
                    hint: "run `batchgrader plan SPEC` or `batchgrader apply SPEC` first, or pass --state".into(),
                });
            }
            [only] => return Ok(only.name.clone()),
            _ => {}
        }
        if verb == Verb::Status {
            // Reading is harmless, so the job last worked on is a fair guess;
            // the snapshot names the job it shows.
            let latest = jobs
                .iter()
                .filter_map(|j| j.last_applied.map(|t| (t, &j.name)))
                .max();
            if let Some((_, name)) = latest {
                return Ok(name.clone());
            }
        }
    }
    let (which, pool): (&str, Vec<&JobFacts>) = if running.is_empty() {
        ("none is running", jobs.iter().collect())
    } else {
        ("several are running", running)
    };
    let width = pool.iter().map(|j| j.name.len()).max().unwrap_or(0);
    let lines: Vec<String> = pool
        .iter()
        .map(|j| {
            format!(
                "  {:width$}  {}",
                j.name,
                command_for(typed, verb, &j.name, None)
            )
        })
        .collect();
    Err(Refusal {
        message: format!(
            "{state} holds several jobs ({}) and {which}; say which one",
            names.join(", ")
        ),
        hint: format!("name the job:\n{}", lines.join("\n")),
    })
}

/// The command line that was typed, with `job` as its job (in place of
/// `replace` when that was the name typed). Without the typed words (a
/// caller that is not the command line), the bare command.
pub fn command_for(typed: &[String], verb: Verb, job: &str, replace: Option<&str>) -> String {
    line_of(&words_for(typed, verb, job, replace))
}

/// The words of [`command_for`], program name left out.
pub fn words_for(typed: &[String], verb: Verb, job: &str, replace: Option<&str>) -> Vec<String> {
    let mut words: Vec<String> = typed.to_vec();
    match words.iter().position(|w| w == verb.word()) {
        Some(at) => match replace.and_then(|r| words[at + 1..].iter().position(|w| w == r)) {
            Some(i) => words[at + 1 + i] = job.to_string(),
            None => words.insert(at + 1, job.to_string()),
        },
        None => words = vec![verb.word().to_string(), job.to_string()],
    }
    words
}

/// The command line `typed` (words after the program name) run in the
/// state folder `state`: any --state it had replaced, --new-state dropped.
pub fn with_state(typed: &[String], state: &std::path::Path) -> String {
    let mut words = vec!["--state".to_string(), state.display().to_string()];
    let mut rest = typed.iter();
    while let Some(w) = rest.next() {
        if w == "--state" {
            rest.next();
        } else if !(w.starts_with("--state=") || w == "--new-state") {
            words.push(w.clone());
        }
    }
    line_of(&words)
}

/// `batchgrader` and `words`, each as a shell reads it back.
fn line_of(words: &[String]) -> String {
    let mut line = String::from("batchgrader");
    for w in words {
        line.push(' ');
        line.push_str(&shell_word(w));
    }
    line
}

/// A word as a shell takes it back: quoted when it holds anything but the
/// usual characters of paths and flags.
fn shell_word(w: &str) -> String {
    let plain = !w.is_empty()
        && w.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b));
    if plain {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', r"'\''"))
    }
}

/// The job a command means (see [`choose`]), from what the state folder
/// holds: its job folders, which of them a live process holds (the pid of
/// a running snapshot or of a planning marker, as `status` decides it), and
/// when each was last applied.
pub fn resolve(g: &Global, job: Option<&str>, verb: Verb) -> Result<String> {
    let state_root = &g.state_root;
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
    }
    // A state folder, or a job folder, this user may not read is said as
    // such: taken for "no job", it sent users to plan again.
    use crate::state::{Access, StateError, denied_at};
    let denied = |path: &std::path::Path| {
        Error::State(StateError::Denied {
            path: denied_at(path),
        })
    };
    let entries = match std::fs::read_dir(state_root) {
        Ok(rd) => rd.flatten().collect(),
        Err(e) if Access::of(e.kind()) == Access::Denied => return Err(denied(state_root)),
        Err(_) => Vec::new(),
    };
    let mut names: Vec<String> = Vec::new();
    let mut refused: Vec<(String, std::path::PathBuf)> = Vec::new();
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        match std::fs::metadata(e.path().join("db")) {
            Ok(m) if m.is_dir() => names.push(name),
            Err(err) if Access::of(err.kind()) == Access::Denied => {
                refused.push((name, e.path().join("db")));
            }
            _ => {}
        }
    }
    if let Some((_, path)) = refused
        .iter()
        .find(|(name, _)| Some(name.as_str()) == job)
        .or(refused
            .first()
            .filter(|_| job.is_none() && names.is_empty()))
    {
        return Err(denied(path));
    }
    names.sort();
    let jobs: Vec<JobFacts> = names
        .into_iter()
        .map(|name| {
            let layout = Layout::new(state_root, &name);
            let snap = status::read(&layout).ok().flatten();
            let applying = snap
                .as_ref()
                .is_some_and(|s| s.state == RunState::Running && s.pid.is_some_and(process_alive));
            let planning = status::read_planning(&layout).is_some_and(|p| process_alive(p.pid));
            JobFacts {
                running: applying || planning,
                last_applied: snap.map(|s| s.started_at.unwrap_or(s.updated_at)),
                name,
            }
        })
        .collect();
    choose(
        &jobs,
        job,
        verb,
        &g.typed,
        // Absolute: "no job in state" does not say which `state` was read.
        &crate::registry::normal(state_root).display().to_string(),
    )
    .map_err(|r| Error::usage_with_hint(r.message, r.hint))
}

/// Whether a process of this pid exists (signal 0 sends nothing).
pub fn process_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn job(name: &str, running: bool, last_applied: Option<u64>) -> JobFacts {
        JobFacts {
            name: name.into(),
            running,
            last_applied,
        }
    }

    fn words(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn which_job_a_command_means() {
        use Verb::*;
        let two_idle = [job("alpha", false, Some(10)), job("beta", false, Some(20))];
        let one_running = [job("alpha", false, Some(10)), job("beta", true, Some(5))];
        let two_running = [job("alpha", true, Some(10)), job("beta", true, Some(5))];
        let never_applied = [job("alpha", false, None), job("beta", false, None)];
        let only = [job("solo", false, None)];
        // (jobs, named, verb, typed, Ok(job) or Err(text the refusal holds))
        type Row<'a> = (
            &'a [JobFacts],
            Option<&'a str>,
            Verb,
            &'a str,
            std::result::Result<&'a str, &'a str>,
        );
        let table: &[Row] = &[
            (&only, None, Resume, "resume", Ok("solo")),
            (&only, None, Status, "status", Ok("solo")),
            (&one_running, None, Resume, "resume", Ok("beta")),
            (&one_running, None, Status, "status --watch", Ok("beta")),
            (&one_running, None, Export, "export --out o.csv", Ok("beta")),
            (
                &one_running,
                Some("alpha"),
                Status,
                "status alpha",
                Ok("alpha"),
            ),
            (&two_idle, None, Status, "status", Ok("beta")),
            (
                &two_idle,
                None,
                Resume,
                "resume",
                Err("batchgrader resume alpha"),
            ),
            (
                &two_idle,
                None,
                Resume,
                "resume",
                Err("batchgrader resume beta"),
            ),
            (&two_idle, None, Resume, "resume", Err("none is running")),
            (
                &two_idle,
                None,
                Export,
                "--state s export --out o.csv",
                Err("batchgrader --state s export alpha --out o.csv"),
            ),
            (
                &two_idle,
                None,
                Report,
                "report --out r.html",
                Err("batchgrader report beta --out r.html"),
            ),
            (
                &two_running,
                None,
                Status,
                "status --watch",
                Err("batchgrader status alpha --watch"),
            ),
            (
                &two_running,
                None,
                Status,
                "status",
                Err("several are running"),
            ),
            (
                &never_applied,
                None,
                Status,
                "status",
                Err("batchgrader status beta"),
            ),
            (&[], None, Status, "status", Err("no job in state")),
            (
                &two_idle,
                Some("alpah"),
                Resume,
                "resume alpah",
                Err("did you mean `alpha`? `batchgrader resume alpha`"),
            ),
            (
                &two_idle,
                Some("zzzzzz"),
                Resume,
                "resume zzzzzz",
                Err("the jobs here: alpha, beta"),
            ),
            (
                &two_idle,
                Some("gamma"),
                Status,
                "status gamma",
                Err("no job `gamma` in state"),
            ),
        ];
        for (jobs, named, verb, typed, want) in table {
            let got = choose(jobs, *named, *verb, &words(typed), "state");
            match (want, &got) {
                (Ok(w), Ok(g)) => assert_eq!(w, g, "{typed}"),
                (Err(w), Err(r)) => assert!(
                    format!("{}\n{}", r.message, r.hint).contains(w),
                    "{typed}: {w:?} not in {r:?}"
                ),
                _ => panic!("{typed}: wanted {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn commands_are_given_back_as_a_shell_takes_them() {
        let typed = vec!["--state".to_string(), "my state".into(), "status".into()];
        assert_eq!(
            command_for(&typed, Verb::Status, "job", None),
            "batchgrader --state 'my state' status job"
        );
        assert_eq!(
            command_for(&[], Verb::Resume, "job", None),
            "batchgrader resume job"
        );
    }

    #[test]
    fn the_typed_command_is_given_back_in_another_state_folder() {
        let dir = std::path::Path::new("/p/work/state");
        // (typed, the same command in /p/work/state)
        let table = [
            (
                "plan work/specs/x.yaml",
                "batchgrader --state /p/work/state plan work/specs/x.yaml",
            ),
            (
                "--state other apply x.yaml --yes",
                "batchgrader --state /p/work/state apply x.yaml --yes",
            ),
            (
                "--state=other --json plan x.yaml --new-state",
                "batchgrader --state /p/work/state --json plan x.yaml",
            ),
        ];
        for (typed, want) in table {
            assert_eq!(with_state(&words(typed), dir), want, "{typed}");
        }
        assert_eq!(
            with_state(&words("status x"), std::path::Path::new("/a b/state")),
            "batchgrader --state '/a b/state' status x"
        );
    }
}
