//! Files written without following a symbolic link.
//!
//! A link planted in a job's folder (`lock`, `outcomes.idx`, `events.jsonl`,
//! a `.tmp` before its rename) would otherwise turn our write into a write
//! of whatever it points at. Every file the state writes is opened here,
//! with `O_NOFOLLOW` (open(2): the open fails with `ELOOP` when the last
//! component is a link), or written to such a file and renamed into place
//! (rename(2) replaces a link, never its target).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

/// `opts` opened at `path`, refusing a symbolic link there.
pub fn open(opts: &mut OpenOptions, path: &Path) -> io::Result<File> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags(libc::O_NOFOLLOW);
    }
    opts.open(path).map_err(|e| explain(e, path))
}

/// Create or truncate `path` for writing, refusing a symbolic link there.
pub fn create(path: &Path) -> io::Result<File> {
    open(
        OpenOptions::new().write(true).create(true).truncate(true),
        path,
    )
}

/// `std::fs::write`, refusing a symbolic link at `path`.
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    create(path)?.write_all(bytes)
}

fn explain(e: io::Error, path: &Path) -> io::Error {
    #[cfg(unix)]
    if e.raw_os_error() == Some(libc::ELOOP) {
        return io::Error::other(format!(
            "{} is a symbolic link, and batchgrader never writes through one: remove it",
            path.display()
        ));
    }
    let _ = path;
    e
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn a_link_is_refused_and_its_target_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let link = dir.path().join("lock");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let appending = || open(OpenOptions::new().append(true).create(true), &link);
        for (how, e) in [
            ("write", write(&link, b"x").unwrap_err()),
            ("create", create(&link).unwrap_err()),
            ("append", appending().unwrap_err()),
        ] {
            assert!(e.to_string().contains("is a symbolic link"), "{how}: {e}");
        }
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        // A plain file is written as usual.
        let plain = dir.path().join("plain");
        write(&plain, b"ok").unwrap();
        assert_eq!(std::fs::read(&plain).unwrap(), b"ok");
    }
}
