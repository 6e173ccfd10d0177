//! The per-user registry of jobs: which state folder each job was planned
//! and applied in, so that standing in another folder never starts a job
//! again (and pays for it twice), and `status`/`resume` find a job without
//! `--state`.
//!
//! One JSON line per event in `$XDG_STATE_HOME/batchgrader/jobs.jsonl`
//! (else `~/.local/state/batchgrader/jobs.jsonl`), the place the XDG Base
//! Directory Specification gives to "state data that should persist between
//! application restarts" (<https://specifications.freedesktop.org/basedir-spec/latest/>).
//! A line holds a job name, two absolute paths, an event and a time: never a
//! key or any text of the job. Appends take an exclusive `flock` and write
//! each line with one `write` on an `O_APPEND` file, so two processes writing
//! at once lose nothing. The decisions below are pure, over the entries read.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What was done to the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Event {
    Plan,
    Apply,
}

/// One line of the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub job: String,
    /// The spec file, absolute.
    pub spec: PathBuf,
    /// The state folder (the one holding the job's folder), absolute.
    pub state: PathBuf,
    pub event: Event,
    /// Unix seconds.
    pub at: u64,
}

/// Where a job lives, as the registry last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    pub job: String,
    pub spec: PathBuf,
    pub state: PathBuf,
    /// The latest event of this job in this folder (unix seconds).
    pub last: u64,
}

/// The registry file, from `$XDG_STATE_HOME` and `$HOME` as read. The
/// specification says a relative `XDG_STATE_HOME` is invalid and to be
/// ignored; without a usable home there is no registry.
pub fn location(xdg_state_home: Option<&OsStr>, home: Option<&OsStr>) -> Option<PathBuf> {
    let base = match xdg_state_home.map(Path::new) {
        Some(x) if x.is_absolute() => x.to_path_buf(),
        _ => match home.map(Path::new) {
            Some(h) if h.is_absolute() => h.join(".local/state"),
            _ => return None,
        },
    };
    Some(base.join("batchgrader").join("jobs.jsonl"))
}

/// The registry file of this process's environment.
pub fn default_location() -> Option<PathBuf> {
    location(
        std::env::var_os("XDG_STATE_HOME").as_deref(),
        std::env::var_os("HOME").as_deref(),
    )
}

/// The entries of the text of a registry file; a line that does not read
/// (cut by a full disk, written by a newer version) is passed over.
pub fn parse(text: &str) -> Vec<Entry> {
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Every entry of the registry at `path` (none when it does not exist yet).
pub fn read(path: &Path) -> std::io::Result<Vec<Entry>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(parse(&text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Add one entry to the registry at `path`, creating its folder (the
/// owner's only) when missing.
pub fn append(path: &Path, entry: &Entry) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let mut line = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    // SAFETY: flock on a descriptor this function owns; released on close.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    file.write_all(&line)
}

/// The folders where `job` was planned or applied (from `spec` when one is
/// given), the most recent first, each with its latest event.
pub fn homes(entries: &[Entry], job: Option<&str>, spec: Option<&Path>) -> Vec<Home> {
    let mut out: Vec<Home> = Vec::new();
    for e in entries {
        if job.is_some_and(|j| j != e.job) || spec.is_some_and(|s| s != e.spec) {
            continue;
        }
        match out
            .iter_mut()
            .find(|h| h.job == e.job && h.state == e.state)
        {
            Some(h) if e.at >= h.last => {
                h.last = e.at;
                h.spec = e.spec.clone();
            }
            Some(_) => {}
            None => out.push(Home {
                job: e.job.clone(),
                spec: e.spec.clone(),
                state: e.state.clone(),
                last: e.at,
            }),
        }
    }
    out.sort_by(|a, b| b.last.cmp(&a.last).then_with(|| a.state.cmp(&b.state)));
    out
}

/// Whether `plan`/`apply SPEC` must stop: the job is not in the state folder
/// `here`, but the same job of the same spec still has state in another
/// folder (`alive`: the homes of [`homes`] whose job folder still exists).
/// Planning here would send every row again. `--new-state` is the user
/// saying that is what they want.
pub fn elsewhere<'a>(
    here: &Path,
    here_holds_job: bool,
    alive: &'a [Home],
    new_state: bool,
) -> Option<&'a Home> {
    if new_state || here_holds_job {
        return None;
    }
    alive.iter().find(|h| h.state != here)
}

/// Homes whose spec or state folder is under `dir`: the jobs a user
/// standing in `dir` can mean without naming one.
pub fn under<'a>(homes: &'a [Home], dir: &Path) -> Vec<&'a Home> {
    homes
        .iter()
        .filter(|h| h.spec.starts_with(dir) || h.state.starts_with(dir))
        .collect()
}

/// A path made absolute and, when it exists, free of links and `..`: the
/// form every path of the registry is kept and compared in.
pub fn normal(path: &Path) -> PathBuf {
    std::fs::canonicalize(path)
        .or_else(|_| std::path::absolute(path))
        .unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(job: &str, spec: &str, state: &str, at: u64) -> Entry {
        Entry {
            job: job.into(),
            spec: spec.into(),
            state: state.into(),
            event: Event::Plan,
            at,
        }
    }

    #[test]
    fn where_the_registry_lives() {
        let os = |s: &'static str| Some(OsStr::new(s));
        let table: &[(Option<&OsStr>, Option<&OsStr>, Option<&str>)] = &[
            (
                os("/x/state"),
                os("/home/u"),
                Some("/x/state/batchgrader/jobs.jsonl"),
            ),
            (
                None,
                os("/home/u"),
                Some("/home/u/.local/state/batchgrader/jobs.jsonl"),
            ),
            // A relative XDG_STATE_HOME is ignored, as the specification says.
            (
                os("rel/state"),
                os("/home/u"),
                Some("/home/u/.local/state/batchgrader/jobs.jsonl"),
            ),
            (
                os(""),
                os("/home/u"),
                Some("/home/u/.local/state/batchgrader/jobs.jsonl"),
            ),
            (None, None, None),
            (None, os(""), None),
        ];
        for (xdg, home, want) in table {
            assert_eq!(
                location(*xdg, *home),
                want.map(PathBuf::from),
                "{xdg:?} {home:?}"
            );
        }
    }

    #[test]
    fn homes_are_one_per_folder_latest_first() {
        let entries = [
            e("a", "/p/a.yaml", "/p/state", 10),
            e("a", "/p/a.yaml", "/q/state", 20),
            e("a", "/p/a.yaml", "/p/state", 30),
            e("b", "/p/b.yaml", "/p/state", 40),
            e("a", "/other/a.yaml", "/other/state", 50),
        ];
        let got = homes(&entries, Some("a"), Some(Path::new("/p/a.yaml")));
        let folders: Vec<(&str, u64)> = got
            .iter()
            .map(|h| (h.state.to_str().unwrap(), h.last))
            .collect();
        assert_eq!(folders, [("/p/state", 30), ("/q/state", 20)]);
        let any_spec = homes(&entries, Some("a"), None);
        assert_eq!(any_spec.len(), 3);
        assert_eq!(any_spec[0].state, Path::new("/other/state"));
        assert_eq!(homes(&entries, None, None).len(), 4);
    }

    #[test]
    fn when_planning_here_would_start_the_job_again() {
        let h = |state: &str| Home {
            job: "a".into(),
            spec: "/p/a.yaml".into(),
            state: state.into(),
            last: 1,
        };
        let work = [h("/p/work/state")];
        let here_too = [h("/p/state"), h("/p/work/state")];
        // (here, here holds the job, alive homes, --new-state, the folder refused for)
        type Row<'a> = (&'a str, bool, &'a [Home], bool, Option<&'a str>);
        let table: &[Row] = &[
            ("/p/state", false, &work, false, Some("/p/work/state")),
            ("/p/state", false, &work, true, None),
            ("/p/state", true, &work, false, None),
            ("/p/work/state", false, &work, false, None),
            ("/p/state", false, &[], false, None),
            // Recorded here and elsewhere, but this folder lost it: the
            // other folder still has it.
            ("/p/state", false, &here_too, false, Some("/p/work/state")),
        ];
        for (here, holds, alive, fresh, want) in table {
            let got = elsewhere(Path::new(here), *holds, alive, *fresh);
            assert_eq!(
                got.map(|h| h.state.to_str().unwrap()),
                *want,
                "{here} {holds} {fresh}"
            );
        }
    }

    #[test]
    fn jobs_under_the_folder_one_stands_in() {
        let hs = homes(
            &[
                e("a", "/p/work/specs/a.yaml", "/p/work/state", 1),
                e("b", "/elsewhere/b.yaml", "/p/state", 2),
                e("c", "/q/c.yaml", "/q/state", 3),
            ],
            None,
            None,
        );
        let names = |dir: &str| -> Vec<String> {
            under(&hs, Path::new(dir))
                .iter()
                .map(|h| h.job.clone())
                .collect()
        };
        assert_eq!(names("/p"), ["b", "a"]);
        assert_eq!(names("/p/work"), ["a"]);
        assert_eq!(names("/q"), ["c"]);
        assert!(names("/r").is_empty());
    }

    #[test]
    fn lines_that_do_not_read_are_passed_over() {
        let good = serde_json::to_string(&e("a", "/s.yaml", "/st", 1)).unwrap();
        let text = format!("{good}\n{{\"job\": \"cut\n\n{good}\n");
        assert_eq!(parse(&text).len(), 2);
    }

    #[test]
    fn two_writers_at_once_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/jobs.jsonl");
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let path = path.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        let long = "x".repeat(300 + t * 100);
                        append(&path, &e(&format!("j{t}"), &long, "/st", i)).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let entries = read(&path).unwrap();
        assert_eq!(entries.len(), 400);
        for t in 0..8 {
            assert_eq!(
                entries.iter().filter(|x| x.job == format!("j{t}")).count(),
                50
            );
        }
    }
}
