//! What can go wrong with a job's state, in words for people.

use std::path::{Path, PathBuf};

use super::FORMAT_VERSION;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "job `{job}` is in use by another batchgrader process ({holder}); it may be applying the job right now"
    )]
    Locked { job: String, holder: String },
    #[error(
        "state of job `{job}` has format version {found}; this batchgrader understands up to {FORMAT_VERSION}"
    )]
    TooNew { job: String, found: u32 },
    #[error("state store {} failed: {message}", dir.display())]
    Db { dir: PathBuf, message: String },
    /// The disk under the state is full: nothing is damaged.
    #[error("the disk holding {} is full: the job's state cannot be written", dir.display())]
    DiskFull { dir: PathBuf },
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state of job `{job}` is damaged: {message}")]
    Corrupt { job: String, message: String },
    #[error("no job `{job}` in {}", root.display())]
    NoJob { job: String, root: PathBuf },
    /// The job's folder (or a file of it) is there, but this user may not
    /// read or write it: not "no job".
    #[error("permission denied: {} cannot be read or written by this user", path.display())]
    Denied { path: PathBuf },
    /// A file the state reads and writes is a symbolic link.
    #[error(
        "{} is a symbolic link inside the state folder; batchgrader never reads or writes a job's state through one",
        path.display()
    )]
    Link { path: PathBuf },
    /// A file of the state is damaged; `repair` says how to mend it.
    #[error("state of job `{job}` is damaged: {}: {message}", file.display())]
    Damaged {
        job: String,
        file: PathBuf,
        message: String,
        repair: String,
    },
}

impl StateError {
    pub fn hint(&self) -> Option<String> {
        match self {
            StateError::Locked { job, .. } => Some(format!(
                "wait for it to finish, or use `batchgrader status {job} --watch` to watch it; if no such process exists, the lock is released automatically"
            )),
            StateError::TooNew { .. } => Some("upgrade batchgrader to work on this job".into()),
            StateError::DiskFull { .. } => Some(
                "free space on that disk, then run the same command again: what was recorded is kept, and nothing is sent twice"
                    .into(),
            ),
            StateError::Link { .. } => Some(
                "remove the link; if the file it points to is this job's own, move that file into its place"
                    .into(),
            ),
            StateError::Damaged { repair, .. } => Some(repair.clone()),
            StateError::Db { dir, .. } => Some(format!(
                "the job's database is {}; if another program holds or changed it, stop that program; if it is damaged, move the job's folder aside and plan the job again (the old folder keeps its results/ and events.jsonl, which name every batch sent)",
                dir.display()
            )),
            StateError::Denied { path } => Some(format!(
                "the folder belongs to another user, or its mode forbids you (`ls -ld {}` shows owner and mode): run the command as that user, have the owner give you access (chown or chmod), or pass --state to use a state folder of your own",
                path.display()
            )),
            StateError::NoJob { .. } => {
                Some("run `batchgrader plan SPEC` first, or pass --state to point at the right folder".into())
            }
            _ => None,
        }
    }
}

/// What an I/O error met on a job's folder or its files means to the
/// user, by its kind alone (EACCES and EPERM are both `PermissionDenied`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Nothing there: no job (where a job was looked for).
    Missing,
    /// There, but not this user's to read or write.
    Denied,
    /// Anything else: said with the system's words and the path.
    Failed,
}

impl Access {
    pub fn of(kind: std::io::ErrorKind) -> Access {
        match kind {
            std::io::ErrorKind::NotFound => Access::Missing,
            std::io::ErrorKind::PermissionDenied => Access::Denied,
            _ => Access::Failed,
        }
    }
}

impl StateError {
    /// A failed `action` on `path`: permission denied says so, with the
    /// folder that refused; anything else keeps the system's error.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        match Access::of(source.kind()) {
            Access::Denied => StateError::Denied {
                path: denied_at(&path),
            },
            Access::Missing | Access::Failed => StateError::Io {
                action,
                path,
                source,
            },
        }
    }
}

/// The first folder on the way to `path` that this user may not enter, or
/// `path` itself when every folder on the way lets it through (the file
/// itself refused): the path a user must look at.
pub fn denied_at(path: &Path) -> PathBuf {
    let ancestors: Vec<&Path> = path.ancestors().collect();
    for pair in ancestors.windows(2).rev() {
        let (inner, outer) = (pair[0], pair[1]);
        if outer.as_os_str().is_empty() {
            continue;
        }
        if std::fs::symlink_metadata(inner)
            .is_err_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied)
        {
            return outer.to_path_buf();
        }
    }
    path.to_path_buf()
}

pub(super) fn db_err(dir: &Path) -> impl Fn(sled::Error) -> StateError + '_ {
    move |e| match &e {
        sled::Error::Io(io) if disk_full(io) => StateError::DiskFull {
            dir: dir.to_path_buf(),
        },
        sled::Error::Io(io) if Access::of(io.kind()) == Access::Denied => StateError::Denied {
            path: denied_at(dir),
        },
        _ => StateError::Db {
            dir: dir.to_path_buf(),
            message: db_message(&e),
        },
    }
}

/// ENOSPC, whether sled hands the error on as it came or wraps its debug
/// text (`Os { code: 28, kind: StorageFull, .. }`) in another error.
fn disk_full(e: &std::io::Error) -> bool {
    const ENOSPC: i32 = 28;
    if e.raw_os_error() == Some(ENOSPC) || e.kind() == std::io::ErrorKind::StorageFull {
        return true;
    }
    let text = format!("{e} {e:?}");
    text.contains("StorageFull") || text.contains("code: 28,")
}

/// sled's own text for corruption is Rust debug output (`Read corrupted
/// data at file offset None backtrace ()`): say it in words.
pub(super) fn db_message(e: &sled::Error) -> String {
    match e {
        sled::Error::Corruption { .. } => {
            "its files are damaged (the database found corrupted data)".into()
        }
        sled::Error::Io(io) => io.to_string(),
        sled::Error::Unsupported(s) => s.clone(),
        sled::Error::ReportableBug(s) => format!("internal error of the database: {s}"),
        sled::Error::CollectionNotFound(_) => "a table of the database is missing".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_table() {
        use std::io::ErrorKind::*;
        let cases = [
            (NotFound, Access::Missing),
            (PermissionDenied, Access::Denied),
            (StorageFull, Access::Failed),
            (InvalidData, Access::Failed),
            (Other, Access::Failed),
        ];
        for (kind, want) in cases {
            assert_eq!(Access::of(kind), want, "{kind:?}");
        }
        let denied = StateError::io(
            "open lock file",
            "/s/job/lock",
            std::io::Error::from_raw_os_error(13),
        );
        assert!(matches!(denied, StateError::Denied { .. }), "{denied:?}");
        assert!(
            denied.to_string().starts_with("permission denied: "),
            "{denied}"
        );
        assert!(denied.hint().unwrap().contains("ls -ld"), "{denied:?}");
        let eperm = StateError::io("read", "/s/job/db", std::io::Error::from_raw_os_error(1));
        assert!(matches!(eperm, StateError::Denied { .. }), "{eperm:?}");
        let other = StateError::io("read", "/s/job/db", std::io::Error::from_raw_os_error(5));
        assert!(matches!(other, StateError::Io { .. }), "{other:?}");
    }

    #[test]
    fn a_full_disk_is_said_as_such_however_sled_passes_it_on() {
        let dir = Path::new("/s/job/db");
        let wrapped = std::io::Error::other(format!("{:?}", std::io::Error::from_raw_os_error(28)));
        let cases = [
            (std::io::Error::from_raw_os_error(28), true),
            (std::io::Error::from(std::io::ErrorKind::StorageFull), true),
            (wrapped, true),
            (std::io::Error::from_raw_os_error(5), false),
            (std::io::Error::other("code: 280, not a disk"), false),
        ];
        for (e, full) in cases {
            let text = format!("{e:?}");
            let got = db_err(dir)(sled::Error::Io(e));
            assert_eq!(matches!(got, StateError::DiskFull { .. }), full, "{text}");
            if full {
                assert_eq!(
                    got.to_string(),
                    "the disk holding /s/job/db is full: the job's state cannot be written"
                );
                assert!(got.hint().unwrap().starts_with("free space on that disk"));
            }
        }
    }
}
