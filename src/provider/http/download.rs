//! A 2xx body streamed to disk: `<dest>.tmp`, fsynced, renamed, so `dest`
//! is either absent or complete after a crash. A download has no total
//! deadline (a result file may be gigabytes); stalls and a minimum pace
//! bound its time, and the free space of its disk bounds its size.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Response;
use tokio::io::AsyncWriteExt;

use super::outcome::{Attempt, Done, io_error, transport_attempt};
use crate::provider::bounded::cap_text;
use crate::provider::config::MIN_FREE_DISK_ENV;
use crate::provider::error::{ErrorKind, ProviderError, human_wait};
use crate::provider::retry::TransportFailure;
use crate::spec::units::human_bytes;

/// After the first `request_timeout` a download must average at least
/// this, so a server that trickles a byte a second cannot hold a run for
/// ever.
const MIN_DOWNLOAD_BYTES_PER_SEC: u64 = 16 * 1024;

/// How long the next piece of a download may take: a stall is cut at
/// `stall`, and the whole download at `stall` plus the time `written` bytes
/// need at `min_rate` bytes a second. Zero: too slow, give up.
fn download_time_left(elapsed: Duration, written: u64, stall: Duration, min_rate: u64) -> Duration {
    let allowed = stall + Duration::from_secs_f64(written as f64 / min_rate.max(1) as f64);
    allowed.saturating_sub(elapsed).min(stall)
}

/// Streams a 2xx body to `<dest>.tmp`, then fsync + rename, so `dest` is
/// either absent or complete after a crash.
pub(super) async fn stream_to_file(
    op: &str,
    mut response: Response,
    dest: &Path,
    request_id: Option<String>,
    stall: Duration,
    min_free: u64,
) -> Attempt {
    let tmp = tmp_path(dest);
    let dir = dest
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut checked_at: Option<u64> = None;
    // Buffered: each write to a tokio file is a hop to a blocking thread,
    // and a body arrives in pieces of a few KB.
    // Never through a link planted at the `.tmp` name (`nofollow`).
    let mut file = match crate::nofollow::create(&tmp) {
        Ok(f) => tokio::io::BufWriter::with_capacity(1 << 20, tokio::fs::File::from_std(f)),
        Err(e) => return Attempt::Fatal(io_error(op, "create", &tmp, &e)),
    };
    let mut written = 0u64;
    let started = tokio::time::Instant::now();
    loop {
        let left = download_time_left(
            started.elapsed(),
            written,
            stall,
            MIN_DOWNLOAD_BYTES_PER_SEC,
        );
        let slow = left < stall;
        let chunk = match tokio::time::timeout(left, response.chunk()).await {
            Ok(Ok(Some(chunk))) => chunk,
            Ok(Ok(None)) => break,
            Ok(Err(e)) => {
                drop(file);
                let _ = tokio::fs::remove_file(&tmp).await;
                return transport_attempt(&e, request_id);
            }
            Err(_) => {
                drop(file);
                let _ = tokio::fs::remove_file(&tmp).await;
                let detail = if slow {
                    format!(
                        "download too slow: {written} bytes in {}, under {} a second",
                        human_wait(started.elapsed()),
                        cap_text(MIN_DOWNLOAD_BYTES_PER_SEC as usize)
                    )
                } else {
                    format!(
                        "download stalled for {} after {written} bytes",
                        human_wait(stall)
                    )
                };
                return Attempt::Transport {
                    failure: TransportFailure::Timeout,
                    detail,
                    request_id,
                };
            }
        };
        if disk_check_due(checked_at, written)
            && let Some(free) = free_disk_bytes(dir)
        {
            checked_at = Some(written);
            if free < min_free {
                drop(file);
                let _ = tokio::fs::remove_file(&tmp).await;
                return Attempt::Fatal(ProviderError::new(op, ErrorKind::Io).with_detail(format!(
                    "stopped after {written} bytes: the disk of {} has {} free, under the {} a download leaves free \
                     (free some space and run `batchgrader resume`, or set {MIN_FREE_DISK_ENV})",
                    dir.display(),
                    human_bytes(free),
                    human_bytes(min_free)
                )));
            }
        }
        if let Err(e) = file.write_all(&chunk).await {
            drop(file);
            let _ = tokio::fs::remove_file(&tmp).await;
            return Attempt::Fatal(io_error(op, "write", &tmp, &e));
        }
        written += chunk.len() as u64;
    }
    let synced = match file.flush().await {
        Ok(()) => file.get_mut().sync_all().await,
        Err(e) => Err(e),
    };
    drop(file);
    if let Err(e) = synced {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Attempt::Fatal(io_error(op, "write", &tmp, &e));
    }
    if let Err(e) = tokio::fs::rename(&tmp, dest).await {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Attempt::Fatal(io_error(op, "rename into", dest, &e));
    }
    sync_parent(dest).await;
    Attempt::Done(Done::File(written))
}

/// Makes the rename durable. Best effort: not every platform can open a directory.
async fn sync_parent(path: &Path) {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if let Ok(dir) = tokio::fs::File::open(&parent).await {
        let _ = dir.sync_all().await;
    }
}

/// `dest` with `.tmp` appended to its file name.
fn tmp_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    dest.with_file_name(name)
}

/// Bytes written between two looks at the free space of a download's disk.
const DISK_CHECK_EVERY: u64 = 64 << 20;

/// Whether a download that has written `written` bytes, and last looked at
/// its disk's free space at `checked_at`, looks again: before the first
/// byte, then every `DISK_CHECK_EVERY` bytes.
fn disk_check_due(checked_at: Option<u64>, written: u64) -> bool {
    checked_at.is_none_or(|at| written.saturating_sub(at) >= DISK_CHECK_EVERY)
}

/// Bytes free for this user on the file system of `dir` (statvfs(3)), or
/// None when it cannot be told.
fn free_disk_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a writable statvfs.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tmp_path_appends() {
        assert_eq!(
            tmp_path(Path::new("/a/b/out.jsonl")),
            PathBuf::from("/a/b/out.jsonl.tmp")
        );
        assert_eq!(tmp_path(Path::new("x")), PathBuf::from("x.tmp"));
    }

    #[test]
    fn the_disk_is_looked_at_first_then_every_64_mib() {
        let m = DISK_CHECK_EVERY;
        let cases = [
            // (last look at, written, look now)
            (None, 0, true),
            (None, 5 * m, true),
            (Some(0), 1, false),
            (Some(0), m - 1, false),
            (Some(0), m, true),
            (Some(m), 2 * m - 1, false),
            (Some(m), 3 * m, true),
            (Some(u64::MAX), 0, false),
        ];
        for (at, written, want) in cases {
            assert_eq!(disk_check_due(at, written), want, "{at:?} {written}");
        }
        // This machine's temp folder has some free space, and a path that
        // is not there has none to tell.
        assert!(free_disk_bytes(&std::env::temp_dir()).is_some_and(|b| b > 0));
        assert_eq!(free_disk_bytes(Path::new("/no/such/folder/here")), None);
    }

    #[test]
    fn downloads_must_keep_a_minimum_pace() {
        let s = Duration::from_secs;
        let stall = s(10);
        let rate = 1000;
        let cases = [
            // At the start: the stall limit.
            (s(0), 0, s(10)),
            // No bytes after 4 s: 6 s left.
            (s(4), 0, s(6)),
            // A fast download is limited by stalls only.
            (s(100), 1_000_000, s(10)),
            // 20 KB in 25 s at 1 KB/s allows 30 s: 5 s left.
            (s(25), 20_000, s(5)),
            // A trickle: 30 bytes in 30 s is too slow.
            (s(30), 30, s(0)),
        ];
        for (elapsed, written, want) in cases {
            assert_eq!(
                download_time_left(elapsed, written, stall, rate),
                want,
                "{elapsed:?} {written}"
            );
        }
    }
}
