//! What became of each request, kept by request fingerprint in one
//! append-only file, `<job>/outcomes.jsonl`: a line per success or failure,
//! the last line for a fingerprint winning. An index on disk
//! (`outcome_index`, `outcomes.idx`) maps each fingerprint to its latest
//! line, and lines are read back on demand, so memory does not grow with
//! the job.
//!
//! A flat log rather than the database, because it is written in bulk (one
//! append and one fsync per merged chunk) and read by key: on 100,000 rows
//! it took 1/6 of the memory and 2/3 of the time that sled needed (measured
//! with bench/apply). Appending again after a crash is harmless: the same
//! outcome is written twice and the last one wins.
//!
//! A line is encoded and decoded in one place only (`encode_line`,
//! `decode_line`); each carries a checksum, so damage anywhere in the file
//! is found (`Log::scan`) instead of being read as another outcome.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::outcome_index::{self, Entry, Index};
use super::window::Window;
use super::{FailureRecord, ResultRecord};

pub const FILE: &str = "outcomes.jsonl";

/// Bytes of log the index may lag behind its mark: at most this much is
/// replayed when a job is opened after a crash (~1 s per 64 MB).
const RESYNC_BYTES: u64 = 64 << 20;

/// A line's buffer is kept for the next read up to this size.
const LINE_KEPT: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    Success(ResultRecord),
    Failure(FailureRecord),
}

#[derive(Serialize, Deserialize)]
struct Line {
    /// Fingerprint, 32 hex digits.
    f: String,
    #[serde(flatten)]
    outcome: Outcome,
}

/// One line of the log, newline included: the JSON, a tab, and 16 hex
/// digits of the SHA-256 of the JSON, so a line damaged anywhere in the file
/// is noticed instead of being read as another outcome or silently dropped.
/// (JSON text never holds a raw tab: serde_json escapes control
/// characters.) Lines written before the checksum existed have none and are
/// read as they are.
fn encode_line(fp: &str, outcome: &Outcome, out: &mut Vec<u8>) {
    #[derive(Serialize)]
    struct LineRef<'a> {
        f: &'a str,
        #[serde(flatten)]
        outcome: &'a Outcome,
    }
    let start = out.len();
    serde_json::to_writer(&mut *out, &LineRef { f: fp, outcome }).expect("outcomes serialize");
    let sum = checksum(&out[start..]);
    out.push(b'\t');
    out.extend_from_slice(sum.as_bytes());
    out.push(b'\n');
}

fn checksum(json: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(json);
    crate::hex::lower(&d[..8])
}

/// One line without its newline: its fingerprint (as a 128-bit key) and
/// outcome, or why it is damaged.
fn decode_line(bytes: &[u8]) -> Result<(u128, Outcome), &'static str> {
    let (json, sum) = match bytes.iter().rposition(|&b| b == b'\t') {
        Some(i) => (&bytes[..i], Some(&bytes[i + 1..])),
        None => (bytes, None),
    };
    if let Some(sum) = sum
        && checksum(json).as_bytes() != sum
    {
        return Err("its checksum does not match");
    }
    let line: Line = serde_json::from_slice(json).map_err(|_| "it is not an outcome")?;
    let k = key(&line.f).ok_or("its fingerprint is not 32 hex digits")?;
    Ok((k, line.outcome))
}

/// Whether a line (without its newline) is sound. A line whose checksum
/// matches was written whole by this program, so its JSON need not be
/// parsed again (a scan checks every line of the log before each output).
fn check_line(bytes: &[u8]) -> Result<(), &'static str> {
    if let Some(i) = bytes.iter().rposition(|&b| b == b'\t') {
        return if checksum(&bytes[..i]).as_bytes() == &bytes[i + 1..] {
            Ok(())
        } else {
            Err("its checksum does not match")
        };
    }
    decode_line(bytes).map(|_| ())
}

/// A damaged line found by a scan of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedLine {
    /// 1-based.
    pub line: u64,
    pub why: &'static str,
}

/// What a scan of the whole log found: how many lines are damaged, and the
/// first few of them (a log of garbage must not fill the memory).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    pub count: u64,
    pub first: Vec<DamagedLine>,
}

const SCAN_KEEP: usize = 16;

/// Read the whole log in `dir` and check every line (streamed: time grows
/// with the log, memory does not). A free function, so that a check for
/// damage neither opens nor touches the index. Returns the scan and the
/// log's length.
pub fn scan(dir: &Path) -> std::io::Result<(Scan, u64)> {
    let path = dir.join(FILE);
    let len = match std::fs::metadata(&path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e),
    };
    let mut scan = Scan::default();
    each_line(&path, 0, len, |number, _, body| {
        if let Err(why) = check_line(body) {
            scan.count += 1;
            if scan.first.len() < SCAN_KEEP {
                scan.first.push(DamagedLine { line: number, why });
            }
        }
        Ok(())
    })?;
    Ok((scan, len))
}

/// Each line of the log with a newline, in order: `f(line number, byte
/// offset, line without newline)`. A last line without newline (torn by a
/// crash) is not passed: the next append starts a fresh line after it.
fn each_line(
    path: &Path,
    from: u64,
    upto: u64,
    mut f: impl FnMut(u64, u64, &[u8]) -> std::io::Result<()>,
) -> std::io::Result<u64> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(from),
        Err(e) => return Err(e),
    };
    file.seek(SeekFrom::Start(from))?;
    let mut r = BufReader::with_capacity(1 << 20, file.take(upto.saturating_sub(from)));
    let mut buf = Vec::new();
    let (mut offset, mut number, mut whole) = (from, 0u64, from);
    loop {
        buf.clear();
        let n = r.read_until(b'\n', &mut buf)?;
        if n == 0 {
            break;
        }
        number += 1;
        if buf.ends_with(b"\n") {
            let body = &buf[..n - 1];
            if !body.iter().all(u8::is_ascii_whitespace) {
                f(number, offset, body)?;
            }
            whole = offset + n as u64;
        }
        offset += n as u64;
    }
    Ok(whole)
}

pub struct Log {
    path: PathBuf,
    index_path: PathBuf,
    /// None until the log has a line (or room was reserved).
    index: Option<Index>,
    /// Entries to make room for when the index is created.
    reserve: u64,
    len: u64,
    /// Lines are read back mostly in the order they were written (the
    /// output follows the rows, and results come in about row order).
    reader: Option<Window>,
    /// The bytes of the line last read.
    line: Vec<u8>,
}

fn key(fp: &str) -> Option<u128> {
    u128::from_str_radix(fp.get(..32)?, 16).ok()
}

impl Log {
    /// Open (or start) the log in `dir`, and bring its index up to date.
    pub fn open(dir: &Path) -> std::io::Result<Log> {
        let path = dir.join(FILE);
        let index_path = dir.join(outcome_index::FILE);
        let mut log = Log {
            path,
            index_path,
            index: None,
            reserve: 0,
            len: 0,
            reader: None,
            line: Vec::new(),
        };
        let len = match std::fs::metadata(&log.path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let _ = std::fs::remove_file(&log.index_path);
                return Ok(log);
            }
            Err(e) => return Err(e),
        };
        let index = match Index::open(&log.index_path)? {
            Some(ix) if ix.covered() == len => ix,
            // The process that wrote after the mark did not close the log
            // (a crash): its entries are in the slots, not in the count.
            Some(mut ix) if ix.covered() < len => {
                ix.recount()?;
                ix
            }
            // Missing, unreadable, or ahead of the log: rebuild, sized by
            // a guess at the lines (a line is rarely under 100 bytes).
            _ => Index::create(&log.index_path, len / 100)?,
        };
        log.len = len;
        log.index = Some(index);
        log.catch_up()?;
        Ok(log)
    }

    /// Index the lines after what the index covers.
    fn catch_up(&mut self) -> std::io::Result<()> {
        let Some(index) = self.index.as_mut() else {
            return Ok(());
        };
        let from = index.covered();
        if from >= self.len {
            return Ok(());
        }
        let whole = each_line(&self.path, from, self.len, |_, offset, body| {
            // A damaged line is skipped here; `scan` reports it.
            match decode_line(body) {
                Ok((k, outcome)) => index.put(k, entry(offset, body.len() + 1, &outcome)),
                Err(_) => Ok(()),
            }
        })?;
        index.set_covered(whole)
    }

    /// Make room in the index for `entries` fingerprints in all, so that a
    /// big job's index is sized once instead of grown step by step.
    pub fn reserve(&mut self, entries: u64) -> std::io::Result<()> {
        self.reserve = self.reserve.max(entries);
        match self.index.as_mut() {
            Some(ix) => ix.reserve(entries),
            None => Ok(()),
        }
    }

    /// Append outcomes and make them durable before returning. A failure
    /// for a fingerprint that has a success (recorded, or earlier in
    /// `entries`) is left out: rows whose requests are the same share one
    /// fingerprint, and a copy that failed after another was answered
    /// turned every copy into a failure, with the answers paid for. A grant
    /// (`FailureRecord::is_grant`) is the exception: asked for by the user
    /// to send an unparsed answer's request again, it replaces the answer.
    pub fn append(&mut self, entries: &[(String, Outcome)]) -> std::io::Result<()> {
        let mut answered: std::collections::HashSet<u128> = Default::default();
        let mut kept: Vec<&(String, Outcome)> = Vec::with_capacity(entries.len());
        for entry in entries {
            let (fp, outcome) = entry;
            if let Some(k) = key(fp) {
                match outcome {
                    Outcome::Success(_) => {
                        answered.insert(k);
                    }
                    Outcome::Failure(f) if f.is_grant() => {
                        answered.remove(&k);
                    }
                    Outcome::Failure(_) => {
                        let recorded = match self.index.as_ref() {
                            Some(ix) => ix.get(k)?.is_some_and(|e| e.ok),
                            None => false,
                        };
                        if recorded || answered.contains(&k) {
                            continue;
                        }
                    }
                }
            }
            kept.push(entry);
        }
        if kept.is_empty() {
            return Ok(());
        }
        let mut file =
            crate::nofollow::open(OpenOptions::new().create(true).append(true), &self.path)?;
        let at = file.metadata()?.len();
        let mut text = Vec::new();
        // After a torn write, start on a fresh line.
        // (The newline is in `text`, so each line's offset below, `at`
        // plus its place in `text`, counts it once.)
        if at > self.len || (at > 0 && !ends_with_newline(&self.path, at)?) {
            text.push(b'\n');
        }
        let mut placed = Vec::with_capacity(kept.len());
        for (fp, outcome) in kept {
            let start = text.len();
            encode_line(fp, outcome, &mut text);
            placed.push((fp, outcome, at + start as u64, text.len() - start));
        }
        file.write_all(&text)?;
        file.sync_data()?;
        self.len = at + text.len() as u64;
        if self.index.is_none() {
            let _ = std::fs::remove_file(&self.index_path);
            self.index = Some(Index::create(
                &self.index_path,
                self.reserve.max(placed.len() as u64),
            )?);
        }
        let index = self.index.as_mut().expect("created above");
        for (fp, outcome, start, n) in placed {
            if let Some(k) = key(fp) {
                index.put(k, entry(start, n, outcome))?;
            }
        }
        // Moving the index's mark syncs its pages, which a merge scatters
        // over the whole table: do it now and then, not at every merge.
        // Until then a reopened index replays the log from its mark, which
        // is idempotent.
        if self.len - index.covered() > RESYNC_BYTES {
            index.set_covered(self.len)?;
        }
        Ok(())
    }

    pub fn get(&mut self, fp: &str) -> std::io::Result<Option<Outcome>> {
        let Some(k) = key(fp) else {
            return Ok(None);
        };
        match self.read_indexed(k)? {
            Lookup::Found(o) => Ok(Some(o)),
            Lookup::Missing => Ok(None),
            // The log was changed behind the index's back (restored from a
            // backup, edited): rebuild the index from the log, once.
            Lookup::Stale(_) => {
                // Read the file as it is now, not through an old handle
                // or cache.
                self.reader = None;
                let _ = std::fs::remove_file(&self.index_path);
                self.index = Some(Index::create(&self.index_path, self.len / 100)?);
                self.catch_up()?;
                match self.read_indexed(k)? {
                    Lookup::Found(o) => Ok(Some(o)),
                    Lookup::Missing => Ok(None),
                    Lookup::Stale(offset) => Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "{}: the line at byte {offset} is not the outcome of {fp}",
                            self.path.display(),
                        ),
                    )),
                }
            }
        }
    }

    fn read_indexed(&mut self, k: u128) -> std::io::Result<Lookup> {
        let Some(e) = self
            .index
            .as_ref()
            .map(|ix| ix.get(k))
            .transpose()?
            .flatten()
        else {
            return Ok(Lookup::Missing);
        };
        // A long line's bytes are not kept for the short ones after it
        // (checked here too, as a stale line returns early below).
        if self.line.capacity() > LINE_KEPT {
            self.line = Vec::new();
        }
        if self.reader.is_none() {
            self.reader = Some(Window::new(File::open(&self.path)?));
        }
        let reader = self.reader.as_ref().expect("opened above");
        let mut long = Vec::new();
        let buf: &[u8] = match e.len {
            Some(len) => match reader.read(e.offset, len as usize, &mut self.line) {
                Ok(()) => &self.line,
                // Cut short: the line was torn or changed under the index.
                Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Ok(Lookup::Stale(e.offset));
                }
                Err(err) => return Err(err),
            },
            // A line too long for its length to be recorded (over 8 MiB):
            // read until its newline, around the cache, into a buffer that
            // is freed after.
            None => {
                long.resize(1 << 20, 0);
                let mut filled = 0;
                loop {
                    let n = match reader
                        .file()
                        .read_at(&mut long[filled..], e.offset + filled as u64)
                    {
                        Ok(n) => n,
                        Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(err) => return Err(err),
                    };
                    filled += n;
                    if n == 0 || long[filled - n..filled].contains(&b'\n') {
                        break;
                    }
                    if filled == long.len() {
                        long.resize(long.len() * 2, 0);
                    }
                }
                long.truncate(filled);
                &long
            }
        };
        // Cut at the line's newline (an unrecorded length reads past it);
        // a line without one was torn or changed under the index.
        let Some(end) = buf.iter().position(|&b| b == b'\n') else {
            return Ok(Lookup::Stale(e.offset));
        };
        let found = match decode_line(&buf[..end]) {
            Ok((found, outcome)) if found == k => Lookup::Found(outcome),
            _ => Lookup::Stale(e.offset),
        };
        // A long line's bytes are not kept for the short ones after it.
        if self.line.capacity() > LINE_KEPT {
            self.line = Vec::new();
        }
        Ok(found)
    }

    /// The log's length in bytes as this process knows it.
    pub fn bytes(&self) -> u64 {
        self.len
    }

    /// Set the damaged file aside as `aside` and write a new log of its
    /// good lines, in their order (so the last still wins), then index it
    /// again from the start. Streamed, like `scan`.
    pub fn rebuild(&mut self, aside: &Path) -> std::io::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let fresh_path = dir.join(format!("{FILE}.rebuilding"));
        {
            let mut out = std::io::BufWriter::new(crate::nofollow::create(&fresh_path)?);
            each_line(&self.path, 0, self.len, |_, _, body| {
                if decode_line(body).is_ok() {
                    out.write_all(body)?;
                    out.write_all(b"\n")?;
                }
                Ok(())
            })?;
            out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        }
        self.reader = None;
        self.index = None;
        std::fs::rename(&self.path, aside)?;
        std::fs::rename(&fresh_path, &self.path)?;
        let _ = std::fs::remove_file(&self.index_path);
        let reserve = self.reserve;
        *self = Log::open(&dir)?;
        self.reserve(reserve)?;
        Ok(())
    }

    /// Is the latest outcome of `fp` (a 128-bit fingerprint) a success?
    pub fn succeeded(&self, fp: u128) -> std::io::Result<bool> {
        match &self.index {
            Some(ix) => Ok(ix.get(fp)?.is_some_and(|e| e.ok)),
            None => Ok(false),
        }
    }
}

enum Lookup {
    Found(Outcome),
    Missing,
    /// The index points at a line (at this offset) that is not the fingerprint's.
    Stale(u64),
}

impl Drop for Log {
    /// Leave the index's mark at the end of the log, so the next open
    /// replays nothing (best effort: a crash only costs a replay).
    fn drop(&mut self) {
        if let Some(ix) = self.index.as_mut()
            && ix.covered() < self.len
        {
            let _ = ix.set_covered(self.len);
        }
    }
}

fn entry(offset: u64, len: usize, outcome: &Outcome) -> Entry {
    Entry {
        offset,
        len: u32::try_from(len).ok(),
        ok: matches!(outcome, Outcome::Success(_)),
    }
}

fn ends_with_newline(path: &Path, len: u64) -> std::io::Result<bool> {
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(len - 1))?;
    let mut b = [0u8; 1];
    f.read_exact(&mut b)?;
    Ok(b[0] == b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(answer: &str) -> Outcome {
        Outcome::Success(ResultRecord {
            answer: answer.into(),
            input_tokens: 10,
            output_tokens: 1,
            cache_write_tokens: 0,
            cache_read_tokens: 0,
            reasoning_tokens: 0,
        })
    }

    fn failed(code: &str) -> Outcome {
        Outcome::Failure(FailureRecord {
            code: code.into(),
            message: "m".into(),
            retryable: true,
            attempts: 1,
            ran: true,
            runs: Some(1),
        })
    }

    fn fp(n: u32) -> String {
        format!("{n:032x}")
    }

    #[test]
    fn last_line_wins_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path()).unwrap();
        log.append(&[(fp(1), failed("server_error")), (fp(2), ok("7\nmultiline"))])
            .unwrap();
        log.append(&[(fp(1), ok("9"))]).unwrap();
        assert_eq!(log.get(&fp(1)).unwrap(), Some(ok("9")));
        assert_eq!(log.get(&fp(2)).unwrap(), Some(ok("7\nmultiline")));
        assert_eq!(log.get(&fp(3)).unwrap(), None);
        let mut again = Log::open(dir.path()).unwrap();
        assert_eq!(again.get(&fp(1)).unwrap(), Some(ok("9")));
        assert!(again.succeeded(1).unwrap() && again.succeeded(2).unwrap());
        assert!(!again.succeeded(3).unwrap());
    }

    #[test]
    fn a_success_is_not_undone_by_a_later_failure_of_the_same_request() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path()).unwrap();
        // Recorded before; in one append, before and after.
        log.append(&[(fp(1), ok("7"))]).unwrap();
        log.append(&[
            (fp(1), failed("server_error")),
            (fp(2), ok("8")),
            (fp(2), failed("server_error")),
            (fp(3), failed("server_error")),
            (fp(3), ok("9")),
            (fp(4), failed("server_error")),
        ])
        .unwrap();
        let want = [ok("7"), ok("8"), ok("9"), failed("server_error")];
        for (n, w) in (1..=4).zip(want) {
            assert_eq!(log.get(&fp(n)).unwrap(), Some(w.clone()), "{n}");
        }
        // Only failures were left out; a later success still replaces one.
        let before = log.bytes();
        log.append(&[(fp(1), failed("x")), (fp(2), failed("x"))])
            .unwrap();
        assert_eq!(log.bytes(), before, "nothing written");
        log.append(&[(fp(4), ok("5"))]).unwrap();
        assert_eq!(log.get(&fp(4)).unwrap(), Some(ok("5")));
        let mut again = Log::open(dir.path()).unwrap();
        assert_eq!(again.get(&fp(2)).unwrap(), Some(ok("8")));
        // A grant (`--retry-parse-failures`) replaces an answer, and the
        // failure of the request sent again then stands.
        let grant = Outcome::Failure(FailureRecord {
            code: crate::state::RETRY_REQUESTED.into(),
            ..match failed("x") {
                Outcome::Failure(f) => f,
                Outcome::Success(_) => unreachable!(),
            }
        });
        again.append(&[(fp(2), grant.clone())]).unwrap();
        assert_eq!(again.get(&fp(2)).unwrap(), Some(grant));
        again.append(&[(fp(2), failed("x"))]).unwrap();
        assert_eq!(again.get(&fp(2)).unwrap(), Some(failed("x")));
        assert_eq!(
            Log::open(dir.path()).unwrap().get(&fp(2)).unwrap(),
            Some(failed("x"))
        );
    }

    #[test]
    fn a_torn_last_line_is_skipped_and_appending_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path()).unwrap();
        log.append(&[(fp(1), ok("1"))]).unwrap();
        // A crash in the middle of an append.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(FILE))
            .unwrap();
        f.write_all(b"{\"f\":\"0000").unwrap();
        let mut log = Log::open(dir.path()).unwrap();
        assert!(log.succeeded(1).unwrap());
        log.append(&[(fp(2), failed("x"))]).unwrap();
        let mut log = Log::open(dir.path()).unwrap();
        assert_eq!(log.get(&fp(1)).unwrap(), Some(ok("1")));
        assert_eq!(log.get(&fp(2)).unwrap(), Some(failed("x")));
        assert!(!log.succeeded(2).unwrap());
    }

    #[test]
    fn after_a_torn_line_the_next_append_is_indexed_where_it_lies() {
        // The torn bytes seen by this log (a failed write) or found when
        // the log was opened (a crash): either way the next append starts
        // with a newline, which its lines' offsets count once.
        for reopen in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let mut log = Log::open(dir.path()).unwrap();
            log.append(&[(fp(1), ok("1"))]).unwrap();
            OpenOptions::new()
                .append(true)
                .open(dir.path().join(FILE))
                .unwrap()
                .write_all(b"{\"f\":\"0000")
                .unwrap();
            if reopen {
                log = Log::open(dir.path()).unwrap();
            }
            log.append(&[(fp(2), ok("2")), (fp(3), failed("x"))])
                .unwrap();
            let on_disk = std::fs::metadata(dir.path().join(FILE)).unwrap().len();
            assert_eq!(log.bytes(), on_disk, "reopen {reopen}");
            // Found where the index says, not after rebuilding the index.
            for (n, want) in [(1, ok("1")), (2, ok("2")), (3, failed("x"))] {
                match log.read_indexed(key(&fp(n)).unwrap()).unwrap() {
                    Lookup::Found(o) => assert_eq!(o, want, "reopen {reopen}"),
                    _ => panic!("{n} not where the index says (reopen {reopen})"),
                }
            }
        }
    }

    #[test]
    fn a_lost_or_stale_index_is_rebuilt_from_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path()).unwrap();
        log.append(&[(fp(1), ok("1")), (fp(2), failed("x"))])
            .unwrap();
        drop(log);
        let index = dir.path().join(outcome_index::FILE);
        let stale = std::fs::read(&index).unwrap();
        let mut log = Log::open(dir.path()).unwrap();
        log.append(&[(fp(2), ok("2")), (fp(3), ok("3"))]).unwrap();
        // A process killed before its mark moved: the next open replays.
        std::mem::forget(log);
        let mut log = Log::open(dir.path()).unwrap();
        assert_eq!(log.get(&fp(3)).unwrap(), Some(ok("3")));
        drop(log);
        // An index that covers only the first append: the rest is replayed.
        std::fs::write(&index, &stale).unwrap();
        let mut log = Log::open(dir.path()).unwrap();
        assert_eq!(log.get(&fp(2)).unwrap(), Some(ok("2")));
        assert_eq!(log.get(&fp(3)).unwrap(), Some(ok("3")));
        drop(log);
        // No index at all.
        std::fs::remove_file(&index).unwrap();
        let mut log = Log::open(dir.path()).unwrap();
        assert_eq!(log.get(&fp(1)).unwrap(), Some(ok("1")));
        assert!(log.succeeded(2).unwrap());
        // An index that points at the wrong lines (the log was replaced
        // behind its back) is not believed: it is rebuilt.
        let other = dir.path().join("other");
        std::fs::create_dir(&other).unwrap();
        let mut o = Log::open(&other).unwrap();
        o.append(&[(fp(9), ok("pad")), (fp(1), ok("1"))]).unwrap();
        drop(o);
        drop(log);
        std::fs::copy(other.join(outcome_index::FILE), &index).unwrap();
        let mut log = Log::open(dir.path()).unwrap();
        assert_eq!(log.get(&fp(1)).unwrap(), Some(ok("1")));
        assert_eq!(log.get(&fp(9)).unwrap(), None);
        assert_eq!(log.get(&fp(3)).unwrap(), Some(ok("3")));
    }

    #[test]
    fn reads_between_appends_and_past_long_lines_find_every_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path()).unwrap();
        let answer = |n: u32| format!("answer {n} {}", "x".repeat((n % 97) as usize));
        // Appends and reads interleave, as in direct mode: each read may
        // have cached the log's end, which the next append moves.
        for batch in 0..40u32 {
            let lines: Vec<_> = (0..50).map(|i| batch * 50 + i).collect();
            let entries: Vec<_> = lines.iter().map(|&n| (fp(n), ok(&answer(n)))).collect();
            log.append(&entries).unwrap();
            for &n in lines.iter().rev().take(3) {
                assert_eq!(log.get(&fp(n)).unwrap(), Some(ok(&answer(n))), "{n}");
            }
        }
        // A line over 8 MiB (its length is not in the index) between short ones.
        let long = "y".repeat(9 << 20);
        log.append(&[(fp(5000), ok(&long)), (fp(5001), ok("after"))])
            .unwrap();
        // A later line for a fingerprint wins over the cached one.
        log.append(&[(fp(7), ok("later"))]).unwrap();
        let check = |log: &mut Log, n: u32| {
            let want = match n {
                7 => ok("later"),
                5000 => ok(&long),
                5001 => ok("after"),
                _ => ok(&answer(n)),
            };
            assert_eq!(log.get(&fp(n)).unwrap(), Some(want), "{n}");
        };
        let all: Vec<u32> = (0..2000).chain([5000, 5001]).collect();
        for &n in &all {
            check(&mut log, n);
        }
        // Out of order, in a fixed shuffle.
        let mut shuffled = all.clone();
        let mut seed = 0x9e37_79b9u64;
        for i in (1..shuffled.len()).rev() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            shuffled.swap(i, (seed % (i as u64 + 1)) as usize);
        }
        for &n in &shuffled {
            check(&mut log, n);
        }
        assert!(log.line.capacity() <= LINE_KEPT);
    }

    #[test]
    fn damaged_lines_are_found_and_a_rebuild_keeps_the_good_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path()).unwrap();
        log.append(&[(fp(1), ok("1")), (fp(2), ok("2")), (fp(3), failed("x"))])
            .unwrap();
        let path = dir.path().join(FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        let cases: [(&str, String, Vec<u64>); 4] = [
            (
                "a changed answer",
                text.replacen("\"2\"", "\"7\"", 1),
                vec![2],
            ),
            (
                "a line cut short",
                {
                    let mut lines: Vec<&str> = text.lines().collect();
                    let cut = &lines[0][..20];
                    lines[0] = cut;
                    lines.join("\n") + "\n"
                },
                vec![1],
            ),
            (
                "garbage in the middle",
                text.replacen("\n", "\n@@@ not json\n", 1),
                vec![2],
            ),
            (
                "an old line without a checksum",
                {
                    let first = text.lines().next().unwrap();
                    let json = first.split('\t').next().unwrap();
                    text.replacen(first, json, 1)
                },
                vec![],
            ),
        ];
        for (name, damaged, want) in cases {
            std::fs::write(&path, &damaged).unwrap();
            let mut log = Log::open(dir.path()).unwrap();
            let lines: Vec<u64> = scan(dir.path())
                .unwrap()
                .0
                .first
                .iter()
                .map(|d| d.line)
                .collect();
            assert_eq!(lines, want, "{name}");
            let aside = dir.path().join("aside");
            log.rebuild(&aside).unwrap();
            assert_eq!(scan(dir.path()).unwrap().0, Scan::default(), "{name}");
            let again = Log::open(dir.path()).unwrap();
            assert_eq!(scan(dir.path()).unwrap().0, Scan::default(), "{name}");
            drop(again);
            assert_eq!(std::fs::read_to_string(&aside).unwrap(), damaged, "{name}");
            std::fs::write(&path, &text).unwrap();
        }
    }
}
