//! Reading a file at scattered offsets through one cached window, for the
//! state's files that are looked up by offset but mostly read in order: the
//! request records (`requests`) and the outcome log (`outcomes`). A system
//! call per record cost more than the work done with it: when the output
//! is written, one `pread` per row was over a fifth of the time.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// A file read through one cached window: `WINDOW` bytes when reads go on
/// from where the last one ended, `SMALL` bytes when they jump about (a
/// large window for each scattered read copied up to 256 KB per record).
///
/// The cache holds bytes as they were when read, so it serves files whose
/// bytes never change once written: files written once, and append-only
/// files, whose new bytes lie past the cached end and are read anew.
pub struct Window {
    file: File,
    /// Start of the cached bytes in the file, and the bytes.
    cache: std::cell::RefCell<(u64, Vec<u8>)>,
}

const WINDOW: usize = 1 << 18;
const SMALL: usize = 1 << 12;

/// How many bytes to read for `len` bytes at `at`, with `start..end`
/// cached: a read that starts inside the cache or just past it goes on in
/// order; any other is a jump.
fn window_len(start: u64, end: u64, at: u64, len: usize) -> usize {
    let in_order = at >= start && at <= end.saturating_add(SMALL as u64);
    if in_order { WINDOW } else { SMALL }.max(len)
}

impl Window {
    pub fn new(file: File) -> Window {
        Window {
            file,
            cache: (0, Vec::new()).into(),
        }
    }

    /// `len` bytes at `at` into `out`; UnexpectedEof past the end of the
    /// file.
    pub fn read(&self, at: u64, len: usize, out: &mut Vec<u8>) -> std::io::Result<()> {
        let mut cache = self.cache.borrow_mut();
        let (start, bytes) = &mut *cache;
        let end = *start + bytes.len() as u64;
        let hit = at >= *start && at.checked_add(len as u64).is_some_and(|e| e <= end);
        if !hit {
            let want = window_len(*start, end, at, len);
            // A long record's bytes are not kept for the windows after it.
            if want <= WINDOW && bytes.capacity() > 4 * WINDOW {
                *bytes = Vec::new();
            }
            bytes.resize(want, 0);
            let mut filled = 0;
            while filled < bytes.len() {
                match self.file.read_at(&mut bytes[filled..], at + filled as u64) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        // Nothing half-read stays cached.
                        bytes.clear();
                        return Err(e);
                    }
                }
            }
            bytes.truncate(filled);
            *start = at;
            if filled < len {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        let from = (at - *start) as usize;
        out.clear();
        out.extend_from_slice(&bytes[from..from + len]);
        Ok(())
    }

    /// The file, for reads that go around the cache.
    pub fn file(&self) -> &File {
        &self.file
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_in_order_take_a_window_and_jumps_a_small_block() {
        let w = WINDOW as u64;
        let cases = [
            // (cached start, cached end, read at, len, bytes to read)
            (0, 0, 0, 44, WINDOW),               // the first read
            (0, w, w, 44, WINDOW),               // just past the window
            (0, w, w + 100, 44, WINDOW),         // a little past it
            (0, w, 10 * w, 44, SMALL),           // far ahead
            (5 * w, 6 * w, w, 44, SMALL),        // behind
            (0, w, 10 * w, 1 << 20, 1 << 20),    // a long record, whole
            (0, 4096, 4096, 44, WINDOW),         // after a small block, in order again
            (0, u64::MAX, u64::MAX, 44, WINDOW), // no overflow at the end of the range
        ];
        for (start, end, at, len, want) in cases {
            assert_eq!(
                window_len(start, end, at, len),
                want,
                "{start} {end} {at} {len}"
            );
        }
    }

    #[test]
    fn an_appended_file_is_read_past_what_was_cached() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, b"first line\n").unwrap();
        let w = Window::new(File::open(&path).unwrap());
        let mut out = Vec::new();
        w.read(0, 5, &mut out).unwrap();
        assert_eq!(out, b"first");
        // Past the end, as it was and as it is.
        let err = w.read(6, 10, &mut out).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"second line\n").unwrap();
        // The cache ended at the old end: bytes past it are read anew.
        w.read(11, 11, &mut out).unwrap();
        assert_eq!(out, b"second line");
        w.read(6, 10, &mut out).unwrap();
        assert_eq!(out, b"line\nsecon");
        w.read(0, 23, &mut out).unwrap();
        assert_eq!(out, b"first line\nsecond line\n");
    }
}
