//! `<job>/outcomes.idx`: where the latest line of each fingerprint sits in
//! `outcomes.jsonl`, as an open-addressing hash table in a file, read and
//! written with positioned I/O. Ten million requests would take over 600 MB
//! as an in-memory map; here they take a few hundred MB of disk and no
//! memory (the OS keeps the hot pages in its cache, outside the process).
//!
//! The table is a cache of the log, never the truth: its header says how
//! many bytes of the log it covers, and opening it replays the log from
//! there (replaying lines in order is idempotent: the last line of a
//! fingerprint wins either way). The table's pages are synced before the
//! header moves forward, so after a crash or power loss the header never
//! claims lines whose slots were lost. A missing or unreadable table is
//! rebuilt from the log.
//!
//! A table of up to `MAP_UP_TO` bytes (about 2,700,000 requests) is mapped
//! into memory (`Mapped`): a lookup is then a few memory reads, where a
//! positioned read costs a system call per probe (in a profile of a
//! 1,000,000-row apply those calls took a fifth of the client's CPU). A
//! bigger table is read and written with positioned I/O: mapped, its pages
//! counted as the process's memory (a 10,000,000-row apply peaked at 360 MB)
//! and every first write to a page cost a page fault in the file system.
//!
//! Layout: a 64-byte header (magic, capacity, entries, bytes of the log
//! covered), then `capacity` slots of 24 bytes: the fingerprint (16 bytes)
//! and a packed word (offset of the line + 1 in the low 40 bits, a success
//! bit, the line's length in the top 23 bits or 0 when longer). A packed
//! word of 0 is an empty slot. Linear probing from a home slot picked by
//! the fingerprint's low 64 bits (already uniform: it is a SHA-256 prefix).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub const FILE: &str = "outcomes.idx";

const MAGIC: &[u8; 8] = b"BGOIDX01";
const HEADER: u64 = 64;
const SLOT: usize = 24;
const OFFSET_BITS: u32 = 40;
const OK_BIT: u64 = 1 << OFFSET_BITS;
const LEN_SHIFT: u32 = OFFSET_BITS + 1;
const MAX_LEN: u64 = (1 << (64 - LEN_SHIFT)) - 1;
/// The table grows past this load (in percent).
const MAX_LOAD: u64 = 75;
const MIN_CAPACITY: u64 = 1 << 12;

/// Where a fingerprint's latest line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub offset: u64,
    /// Length of the line with its newline; None when too long to record.
    pub len: Option<u32>,
    /// The line is a success.
    pub ok: bool,
}

impl Entry {
    fn pack(self) -> u64 {
        let len = self.len.map_or(0, |l| u64::from(l).min(MAX_LEN + 1));
        let len = if len > MAX_LEN { 0 } else { len };
        (self.offset + 1) | if self.ok { OK_BIT } else { 0 } | (len << LEN_SHIFT)
    }

    fn unpack(w: u64) -> Entry {
        let len = w >> LEN_SHIFT;
        Entry {
            offset: (w & (OK_BIT - 1)) - 1,
            len: (len != 0).then_some(len as u32),
            ok: w & OK_BIT != 0,
        }
    }
}

/// A file mapped read-write and shared, for its whole length. The length
/// is fixed while mapped (the table never changes its file's size: it grows
/// into a new file); the job's lock keeps other processes from truncating
/// it under the mapping.
struct Mapped {
    ptr: *mut u8,
    len: usize,
}

// The mapping is plain memory owned by this value; it is used from one
// thread at a time (the outcome log sits behind a mutex).
unsafe impl Send for Mapped {}

impl Mapped {
    fn new(file: &File, len: u64) -> std::io::Result<Mapped> {
        let len = usize::try_from(len)
            .map_err(|_| std::io::Error::other("outcome index too large to map"))?;
        // SAFETY: a fresh shared mapping of `len` bytes of an open file
        // (its length was just set or checked); failure is checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Mapped {
            ptr: ptr.cast(),
            len,
        })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` bytes for as long as `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`; `&mut self` makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    /// Write the changed pages to the file, and wait for the disk.
    fn sync(&self) -> std::io::Result<()> {
        // SAFETY: the range is exactly the live mapping.
        if unsafe { libc::msync(self.ptr.cast(), self.len, libc::MS_SYNC) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: unmaps the mapping made in `new`, once.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

/// The biggest table that is mapped.
const MAP_UP_TO: u64 = 64 << 20;
/// Slots read per probe step with positioned reads (192 bytes).
const PROBE: usize = 8;

/// Where the table's bytes are reached: mapped, or through the file.
enum Store {
    Mapped(Mapped),
    File(File),
}

impl Store {
    fn new(file: File, size: u64, map: bool) -> std::io::Result<Store> {
        Ok(if map {
            Store::Mapped(Mapped::new(&file, size)?)
        } else {
            Store::File(file)
        })
    }

    fn read(&self, at: u64, out: &mut [u8]) -> std::io::Result<()> {
        match self {
            Store::Mapped(m) => {
                let at = at as usize;
                out.copy_from_slice(&m.bytes()[at..at + out.len()]);
                Ok(())
            }
            Store::File(f) => f.read_exact_at(out, at),
        }
    }

    fn write(&mut self, at: u64, data: &[u8]) -> std::io::Result<()> {
        match self {
            Store::Mapped(m) => {
                let at = at as usize;
                m.bytes_mut()[at..at + data.len()].copy_from_slice(data);
                Ok(())
            }
            Store::File(f) => f.write_all_at(data, at),
        }
    }

    fn sync(&self) -> std::io::Result<()> {
        match self {
            Store::Mapped(m) => m.sync(),
            Store::File(f) => f.sync_data(),
        }
    }
}

pub struct Index {
    store: Store,
    /// Tables up to this size are mapped (`MAP_UP_TO`; tests lower it).
    map_up_to: u64,
    path: PathBuf,
    capacity: u64,
    count: u64,
    covered: u64,
}

impl Index {
    /// Open an existing table; None when it is missing or unreadable (then
    /// the caller rebuilds it).
    pub fn open(path: &Path) -> std::io::Result<Option<Index>> {
        let file = match crate::nofollow::open(OpenOptions::new().read(true).write(true), path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut h = [0u8; HEADER as usize];
        if file.read_exact_at(&mut h, 0).is_err() || &h[..8] != MAGIC {
            return Ok(None);
        }
        let word = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().expect("8 bytes"));
        let (capacity, count, covered) = (word(8), word(16), word(24));
        let size = file.metadata()?.len();
        if capacity < MIN_CAPACITY || count > capacity || size != HEADER + capacity * SLOT as u64 {
            return Ok(None);
        }
        Ok(Some(Index {
            store: Store::new(file, size, size <= MAP_UP_TO)?,
            map_up_to: MAP_UP_TO,
            path: path.to_path_buf(),
            capacity,
            count,
            covered,
        }))
    }

    /// A new, empty table with room for `entries` (replacing any file).
    pub fn create(path: &Path, entries: u64) -> std::io::Result<Index> {
        Index::create_as(path, entries, MAP_UP_TO)
    }

    fn create_as(path: &Path, entries: u64, map_up_to: u64) -> std::io::Result<Index> {
        let capacity = capacity_for(entries);
        let file = crate::nofollow::open(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true),
            path,
        )?;
        // A sparse file: untouched slots cost no disk and read as empty.
        let size = HEADER + capacity * SLOT as u64;
        file.set_len(size)?;
        let mut index = Index {
            store: Store::new(file, size, size <= map_up_to)?,
            map_up_to,
            path: path.to_path_buf(),
            capacity,
            count: 0,
            covered: 0,
        };
        index.write_header()?;
        Ok(index)
    }

    /// Count the entries again from the slots. The header's count is
    /// written with its mark; after a crash both are behind the slots.
    pub fn recount(&mut self) -> std::io::Result<()> {
        let mut count = 0u64;
        self.each_slot(|_, word| {
            count += u64::from(word != 0);
            Ok(())
        })?;
        self.count = count;
        Ok(())
    }

    /// Every slot in order, a block at a time: (fingerprint, packed word).
    fn each_slot(
        &self,
        mut f: impl FnMut(u128, u64) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let mut block = vec![0u8; SLOT * 4096];
        let mut at = 0u64;
        while at < self.capacity {
            let n = 4096.min(self.capacity - at) as usize;
            let bytes = &mut block[..n * SLOT];
            self.store.read(HEADER + at * SLOT as u64, bytes)?;
            for slot in bytes.chunks_exact(SLOT) {
                f(
                    u128::from_le_bytes(slot[..16].try_into().expect("16 bytes")),
                    u64::from_le_bytes(slot[16..].try_into().expect("8 bytes")),
                )?;
            }
            at += n as u64;
        }
        Ok(())
    }

    /// Bytes of the log the table reflects.
    pub fn covered(&self) -> u64 {
        self.covered
    }

    #[cfg(test)]
    pub fn len(&self) -> u64 {
        self.count
    }

    fn home(&self, fp: u128) -> u64 {
        ((u128::from(fp as u64) * u128::from(self.capacity)) >> 64) as u64
    }

    /// The slot holding `fp`, or the empty slot where it would go, with
    /// that slot's packed word (0 when empty).
    fn find(&self, fp: u128) -> std::io::Result<(u64, u64)> {
        let mut at = self.home(fp);
        let mut buf = [0u8; SLOT * PROBE];
        let want = fp.to_le_bytes();
        loop {
            let n = PROBE.min((self.capacity - at) as usize);
            let bytes = &mut buf[..n * SLOT];
            self.store.read(HEADER + at * SLOT as u64, bytes)?;
            for (k, slot) in bytes.chunks_exact(SLOT).enumerate() {
                let word = u64::from_le_bytes(slot[16..].try_into().expect("8 bytes"));
                if word == 0 || slot[..16] == want {
                    return Ok((at + k as u64, word));
                }
            }
            // The table is never full (MAX_LOAD), so an empty slot comes.
            at = (at + n as u64) % self.capacity;
        }
    }

    pub fn get(&self, fp: u128) -> std::io::Result<Option<Entry>> {
        if self.count == 0 {
            return Ok(None);
        }
        let (_, word) = self.find(fp)?;
        Ok((word != 0).then(|| Entry::unpack(word)))
    }

    /// Point `fp` at a newer line.
    pub fn put(&mut self, fp: u128, entry: Entry) -> std::io::Result<()> {
        if (self.count + 1) * 100 > self.capacity * MAX_LOAD {
            self.grow(self.count + 1)?;
        }
        let (at, word) = self.find(fp)?;
        let mut slot = [0u8; SLOT];
        slot[..16].copy_from_slice(&fp.to_le_bytes());
        slot[16..].copy_from_slice(&entry.pack().to_le_bytes());
        self.store.write(HEADER + at * SLOT as u64, &slot)?;
        if word == 0 {
            self.count += 1;
        }
        Ok(())
    }

    /// Make room for `entries` in all, rehashing into a bigger table when
    /// needed (sized for the job up front, this happens rarely).
    pub fn reserve(&mut self, entries: u64) -> std::io::Result<()> {
        if entries * 100 > self.capacity * MAX_LOAD {
            self.grow(entries)?;
        }
        Ok(())
    }

    fn grow(&mut self, entries: u64) -> std::io::Result<()> {
        let tmp = self.path.with_extension("idx.tmp");
        let mut bigger = Index::create_as(&tmp, entries.max(self.count * 2), self.map_up_to)?;
        self.each_slot(|fp, word| {
            if word != 0 {
                bigger.put(fp, Entry::unpack(word))?;
            }
            Ok(())
        })?;
        bigger.covered = self.covered;
        bigger.write_header()?;
        bigger.store.sync()?;
        std::fs::rename(&tmp, &self.path)?;
        bigger.path = self.path.clone();
        *self = bigger;
        Ok(())
    }

    /// Record that the log's first `covered` bytes are in the table: the
    /// slots reach the disk first.
    pub fn set_covered(&mut self, covered: u64) -> std::io::Result<()> {
        self.store.sync()?;
        self.covered = covered;
        self.write_header()
    }

    fn write_header(&mut self) -> std::io::Result<()> {
        let mut h = [0u8; HEADER as usize];
        h[..8].copy_from_slice(MAGIC);
        h[8..16].copy_from_slice(&self.capacity.to_le_bytes());
        h[16..24].copy_from_slice(&self.count.to_le_bytes());
        h[24..32].copy_from_slice(&self.covered.to_le_bytes());
        self.store.write(0, &h)
    }
}

/// Slots for `entries` at 60% load.
fn capacity_for(entries: u64) -> u64 {
    (entries.saturating_mul(100) / 60 + 1).max(MIN_CAPACITY)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(offset: u64, len: Option<u32>, ok: bool) -> Entry {
        Entry { offset, len, ok }
    }

    #[test]
    fn entries_pack_and_unpack() {
        let cases = [
            e(0, Some(1), false),
            e(0, Some(1), true),
            e((1 << 40) - 2, Some(8_388_607), true),
            e(12345, None, false),
        ];
        for c in cases {
            assert_ne!(c.pack(), 0, "{c:?} is not an empty slot");
            assert_eq!(Entry::unpack(c.pack()), c);
        }
        // A line too long for the length field records no length.
        assert_eq!(Entry::unpack(e(7, Some(9_000_000), true).pack()).len, None);
    }

    #[test]
    fn put_get_grow_and_reopen() {
        // Mapped (the default for small tables), and through the file.
        for map_up_to in [MAP_UP_TO, 0] {
            put_get_grow_and_reopen_with(map_up_to);
        }
    }

    fn put_get_grow_and_reopen_with(map_up_to: u64) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let mut ix = Index::create_as(&path, 10, map_up_to).unwrap();
        assert_eq!(matches!(ix.store, Store::Mapped(_)), map_up_to > 0);
        assert_eq!(ix.capacity, MIN_CAPACITY);
        // Fingerprints that share their low 64 bits probe past each other.
        let fps: Vec<u128> = (0..20_000u128)
            .map(|i| {
                if i % 7 == 0 {
                    (i << 64) | 42
                } else {
                    i * 0x9e37_79b9_7f4a_7c15
                }
            })
            .collect();
        for (i, &fp) in fps.iter().enumerate() {
            ix.put(fp, e(i as u64 * 10, Some(10), i % 2 == 0)).unwrap();
        }
        assert!(ix.capacity > MIN_CAPACITY, "grew");
        assert_eq!(
            matches!(ix.store, Store::Mapped(_)),
            map_up_to > 0,
            "kept its store"
        );
        // Overwrites do not add entries.
        ix.put(fps[3], e(999, Some(5), true)).unwrap();
        assert_eq!(ix.len(), fps.len() as u64);
        ix.set_covered(777).unwrap();
        // Entries written after the mark moved (then a crash): the header's
        // count is behind until recounted.
        ix.put(5 << 64, e(1, Some(1), true)).unwrap();
        let mut again = Index::open(&path).unwrap().expect("valid");
        assert_eq!(again.len(), fps.len() as u64);
        again.recount().unwrap();
        assert_eq!(again.len(), fps.len() as u64 + 1);
        assert_eq!(again.covered(), 777);
        for (i, &fp) in fps.iter().enumerate() {
            let want = if i == 3 {
                e(999, Some(5), true)
            } else {
                e(i as u64 * 10, Some(10), i % 2 == 0)
            };
            assert_eq!(again.get(fp).unwrap(), Some(want), "entry {i}");
        }
        assert_eq!(again.get(123_456_789_123).unwrap(), None);
    }

    #[test]
    fn a_bad_file_reads_as_missing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        assert!(Index::open(&path).unwrap().is_none());
        std::fs::write(&path, b"not an index").unwrap();
        assert!(Index::open(&path).unwrap().is_none());
        Index::create(&path, 1).unwrap();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(100).unwrap();
        assert!(Index::open(&path).unwrap().is_none(), "truncated");
    }
}
