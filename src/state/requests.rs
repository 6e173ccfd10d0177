//! The per-row request records of a plan, in two flat files beside its
//! chunk files: `requests.idx` (one fixed-size record per row, in row
//! order, so row N is at a known offset) and `requests.keys` (the row keys,
//! concatenated). They are written once by `plan` and never changed, which
//! is why they live in files and not in the database: a million rows write
//! in a fraction of a second and cost no memory.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use super::RequestRecord;
use super::window::Window;

pub const INDEX: &str = "requests.idx";
pub const KEYS: &str = "requests.keys";

/// fingerprint (16) + tokens (8) + seq (8, u64::MAX = none) + key offset (8) + key length (4).
const RECORD: usize = 16 + 8 + 8 + 8 + 4;
const NO_SEQ: u64 = u64::MAX;

/// Whether the record files in `dir` hold exactly `rows` records: `Err`
/// says what is wrong (missing, or the wrong size).
pub fn check_files(dir: &Path, rows: u64) -> Result<(), (std::path::PathBuf, String)> {
    let index = dir.join(INDEX);
    match std::fs::metadata(&index) {
        Err(e) => return Err((index, format!("cannot be read ({e})"))),
        Ok(m) if m.len() != rows * RECORD as u64 => {
            return Err((
                index,
                format!(
                    "holds {} bytes, but the plan's {rows} rows need {}",
                    m.len(),
                    rows * RECORD as u64
                ),
            ));
        }
        Ok(_) => {}
    }
    let keys = dir.join(KEYS);
    if let Err(e) = std::fs::metadata(&keys) {
        return Err((keys, format!("cannot be read ({e})")));
    }
    Ok(())
}

/// Appends records; rows must come in order starting at 1.
pub struct Writer {
    index: BufWriter<File>,
    keys: BufWriter<File>,
    key_offset: u64,
    next_row: u64,
}

impl Writer {
    pub fn create(dir: &Path) -> std::io::Result<Writer> {
        Ok(Writer {
            index: BufWriter::with_capacity(1 << 18, crate::nofollow::create(&dir.join(INDEX))?),
            keys: BufWriter::with_capacity(1 << 18, crate::nofollow::create(&dir.join(KEYS))?),
            key_offset: 0,
            next_row: 1,
        })
    }

    pub fn push(&mut self, r: &RequestRecord) -> std::io::Result<()> {
        if r.row != self.next_row {
            return Err(std::io::Error::other(format!(
                "request records out of order: row {} after row {}",
                r.row,
                self.next_row - 1
            )));
        }
        let fp = parse_fingerprint(&r.fingerprint)
            .ok_or_else(|| std::io::Error::other(format!("bad fingerprint {}", r.fingerprint)))?;
        let mut rec = [0u8; RECORD];
        rec[..16].copy_from_slice(&fp);
        rec[16..24].copy_from_slice(&r.tokens.to_le_bytes());
        rec[24..32].copy_from_slice(&r.seq.unwrap_or(NO_SEQ).to_le_bytes());
        rec[32..40].copy_from_slice(&self.key_offset.to_le_bytes());
        rec[40..44].copy_from_slice(&(r.key.len() as u32).to_le_bytes());
        self.index.write_all(&rec)?;
        self.keys.write_all(r.key.as_bytes())?;
        self.key_offset += r.key.len() as u64;
        self.next_row += 1;
        Ok(())
    }

    /// Flush both files to disk.
    pub fn finish(self) -> std::io::Result<()> {
        for w in [self.index, self.keys] {
            w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        }
        Ok(())
    }
}

fn parse_fingerprint(hex: &str) -> Option<[u8; 16]> {
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

fn decode(row: u64, rec: &[u8; RECORD]) -> (RequestRecord, u64, usize) {
    let u64_at = |i: usize| u64::from_le_bytes(rec[i..i + 8].try_into().expect("8 bytes"));
    let seq = u64_at(24);
    let record = RequestRecord {
        row,
        key: String::new(),
        fingerprint: crate::hex::lower(&rec[..16]),
        tokens: u64_at(16),
        seq: (seq != NO_SEQ).then_some(seq),
    };
    let key_len = u32::from_le_bytes(rec[40..44].try_into().expect("4 bytes")) as usize;
    (record, u64_at(32), key_len)
}

/// Every record, in row order. A missing plan folder reads as no records.
pub struct Records {
    files: Option<(BufReader<File>, BufReader<File>)>,
    row: u64,
}

impl Records {
    pub fn open(dir: &Path) -> std::io::Result<Records> {
        let files = match (File::open(dir.join(INDEX)), File::open(dir.join(KEYS))) {
            (Ok(i), Ok(k)) => Some((
                BufReader::with_capacity(1 << 18, i),
                BufReader::with_capacity(1 << 18, k),
            )),
            (Err(e), _) | (_, Err(e)) if e.kind() == std::io::ErrorKind::NotFound => None,
            (Err(e), _) | (_, Err(e)) => return Err(e),
        };
        Ok(Records { files, row: 0 })
    }
}

impl Iterator for Records {
    type Item = std::io::Result<RequestRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        let (index, keys) = self.files.as_mut()?;
        let mut rec = [0u8; RECORD];
        match index.read_exact(&mut rec) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
            Err(e) => return Some(Err(e)),
        }
        self.row += 1;
        let (mut r, _, key_len) = decode(self.row, &rec);
        let mut key = vec![0u8; key_len];
        if let Err(e) = keys.read_exact(&mut key) {
            return Some(Err(e));
        }
        r.key = String::from_utf8_lossy(&key).into_owned();
        Some(Ok(r))
    }
}

/// Random access by row, for matching result lines to rows. Lookups come
/// mostly in row order (a chunk's rows, one after another), so each file is
/// read a window at a time rather than with a system call per row.
pub struct Lookup {
    index: Window,
    keys: Window,
}

impl Lookup {
    pub fn open(dir: &Path) -> std::io::Result<Lookup> {
        Ok(Lookup {
            index: Window::new(File::open(dir.join(INDEX))?),
            keys: Window::new(File::open(dir.join(KEYS))?),
        })
    }

    pub fn get(&self, row: u64) -> std::io::Result<Option<RequestRecord>> {
        if row == 0 {
            return Ok(None);
        }
        let mut buf = Vec::with_capacity(RECORD);
        match self.index.read((row - 1) * RECORD as u64, RECORD, &mut buf) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let rec: &[u8; RECORD] = buf[..].try_into().expect("RECORD bytes");
        let (mut r, offset, len) = decode(row, rec);
        let mut key = Vec::with_capacity(len);
        self.keys.read(offset, len, &mut key)?;
        r.key = String::from_utf8_lossy(&key).into_owned();
        Ok(Some(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(row: u64) -> RequestRecord {
        RequestRecord {
            row,
            key: if row == 2 {
                String::new()
            } else {
                format!("key-{row}-é")
            },
            fingerprint: format!("{:032x}", row * 0x1234_5678_9abc),
            tokens: row * 10,
            seq: (row % 2 == 1).then_some(row / 2),
        }
    }

    #[test]
    fn look_ups_in_random_order_find_every_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::create(dir.path()).unwrap();
        let rows = 20_000u64;
        for row in 1..=rows {
            w.push(&rec(row)).unwrap();
        }
        w.finish().unwrap();
        let l = Lookup::open(dir.path()).unwrap();
        // Every row once, in scattered order: a step prime to `rows`.
        let step = 7919u64;
        let mut seen = std::collections::HashSet::new();
        let mut row = 1u64;
        for _ in 0..rows {
            row = (row - 1 + step) % rows + 1;
            assert!(seen.insert(row), "row {row} twice");
            assert_eq!(l.get(row).unwrap(), Some(rec(row)));
        }
        assert_eq!(seen.len() as u64, rows);
    }

    #[test]
    fn write_iterate_and_look_up() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::create(dir.path()).unwrap();
        for row in 1..=5 {
            w.push(&rec(row)).unwrap();
        }
        assert!(w.push(&rec(9)).is_err(), "rows must be consecutive");
        w.finish().unwrap();
        let all: Vec<RequestRecord> = Records::open(dir.path())
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(all, (1..=5).map(rec).collect::<Vec<_>>());
        let l = Lookup::open(dir.path()).unwrap();
        assert_eq!(l.get(4).unwrap(), Some(rec(4)));
        assert_eq!(l.get(2).unwrap(), Some(rec(2)));
        assert_eq!(l.get(6).unwrap(), None);
        assert_eq!(l.get(0).unwrap(), None);
    }

    #[test]
    fn look_ups_in_any_order_across_many_windows() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::create(dir.path()).unwrap();
        // Over 20,000 rows: the records and the keys span several windows.
        let n = 20_000u64;
        let long = |row: u64| RequestRecord {
            key: format!("{row}-{}", "k".repeat((row % 50) as usize)),
            ..rec(row)
        };
        for row in 1..=n {
            w.push(&long(row)).unwrap();
        }
        w.finish().unwrap();
        let l = Lookup::open(dir.path()).unwrap();
        let order = (1..=n)
            .chain((1..=n).rev())
            .chain((1..=n).map(|r| r * 7919 % n + 1));
        for row in order {
            assert_eq!(l.get(row).unwrap(), Some(long(row)), "row {row}");
        }
        assert_eq!(l.get(n + 1).unwrap(), None);
        assert_eq!(
            l.get(n).unwrap(),
            Some(long(n)),
            "after a miss past the end"
        );
    }

    #[test]
    fn missing_folder_reads_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Records::open(&dir.path().join("nope")).unwrap().count(), 0);
    }
}
