//! The duplicate-id check of `plan`, with memory that does not grow with
//! the rows: each row's key is reduced to a 64-bit hash, the (hash, row)
//! pairs are sorted in runs of RUN pairs (8 MB) spilled to the plan's
//! scratch folder, and at the end the runs are merged, so equal hashes meet
//! side by side. Only rows whose hashes are equal have their keys compared
//! (read back from the plan's request records): a real duplicate, or a hash
//! collision (about once in 10^11 plans of ten million rows).
//!
//! The error names the first row, in input order, whose id an earlier row
//! already had, and that earlier row: the same answer a check in reading
//! order gives.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::input::{InputError, Row, RowReader, Source, place};

/// Pairs sorted in memory before a run is written.
const RUN: usize = 1 << 19;

pub struct IdCheck<'a> {
    sources: &'a [Source],
    dir: PathBuf,
    pairs: Vec<(u64, u64)>,
    runs: Vec<PathBuf>,
    /// Pairs per run (RUN; smaller in tests).
    run: usize,
}

impl<'a> IdCheck<'a> {
    /// Spill files go to `dir` (the plan's scratch folder).
    pub fn new(sources: &'a [Source], dir: &Path) -> Self {
        IdCheck {
            sources,
            dir: dir.to_path_buf(),
            pairs: Vec::new(),
            runs: Vec::new(),
            run: RUN,
        }
    }

    /// Note the key of `row`; an empty key is refused at once.
    pub fn add(&mut self, key: &str, row: &Row) -> Result<()> {
        if key.is_empty() {
            return Err(InputError::Bad {
                path: self.sources[row.file].path.clone(),
                line: row.line,
                message: format!("row {} has an empty id (input.id)", row.number),
            }
            .into());
        }
        if self.pairs.capacity() == 0 {
            self.pairs.reserve_exact(self.run);
        }
        self.pairs.push((key_hash(key), row.number));
        if self.pairs.len() == self.run {
            self.spill()?;
        }
        Ok(())
    }

    fn spill(&mut self) -> Result<()> {
        self.pairs.sort_unstable();
        let path = self.dir.join(format!("ids-{}.run", self.runs.len() + 1));
        let io = |e| Error::io("write", &path, e);
        let mut w = BufWriter::with_capacity(1 << 16, crate::nofollow::create(&path).map_err(io)?);
        for (h, row) in self.pairs.drain(..) {
            w.write_all(&h.to_le_bytes()).map_err(io)?;
            w.write_all(&row.to_le_bytes()).map_err(io)?;
        }
        w.into_inner().map_err(|e| io(e.into_error()))?;
        self.runs.push(path);
        Ok(())
    }

    /// After every row: find the first duplicate, if any. `key_of(row)`
    /// reads a row's key back.
    pub fn finish(mut self, mut key_of: impl FnMut(u64) -> Result<String>) -> Result<()> {
        self.pairs.sort_unstable();
        let mut streams: Vec<Stream> = Vec::with_capacity(self.runs.len() + 1);
        for path in &self.runs {
            let f = File::open(path).map_err(|e| Error::io("read", path, e))?;
            streams.push(Stream::File(BufReader::with_capacity(1 << 16, f), path));
        }
        streams.push(Stream::Memory(std::mem::take(&mut self.pairs).into_iter()));
        let mut heap = BinaryHeap::new();
        for (i, s) in streams.iter_mut().enumerate() {
            if let Some(p) = s.next()? {
                heap.push(Reverse((p, i)));
            }
        }
        // The rows of one hash, in row order (pairs sort by hash, then row).
        let mut group: Vec<u64> = Vec::new();
        let mut group_hash = None;
        // (later row, earlier row) of the first duplicate in input order.
        let mut first: Option<(u64, u64)> = None;
        while let Some(Reverse(((h, row), i))) = heap.pop() {
            if let Some(p) = streams[i].next()? {
                heap.push(Reverse((p, i)));
            }
            if group_hash != Some(h) {
                first = earliest(first, duplicate_in(&group, &mut key_of)?);
                group.clear();
                group_hash = Some(h);
            }
            group.push(row);
        }
        first = earliest(first, duplicate_in(&group, &mut key_of)?);
        for path in &self.runs {
            let _ = std::fs::remove_file(path);
        }
        match first {
            None => Ok(()),
            Some((row, earlier)) => Err(self.duplicate_error(row, earlier, &key_of(row)?)),
        }
    }

    fn duplicate_error(&self, row: u64, earlier: u64, key: &str) -> Error {
        // Find both rows' places by reading the input again (only on this error path).
        let mut places = [None, None];
        for r in RowReader::new(self.sources.to_vec(), false) {
            let Ok(r) = r else { break };
            if r.number == earlier {
                places[0] = Some((r.file, r.line));
            }
            if r.number == row {
                places[1] = Some((r.file, r.line));
                break;
            }
        }
        let (file, line) = places[1].unwrap_or((0, 0));
        let earlier_place = places[0].map_or_else(String::new, |(f, l)| {
            format!(" ({})", place(self.sources, f, l))
        });
        InputError::Bad {
            path: self
                .sources
                .get(file)
                .map(|s| s.path.clone())
                .unwrap_or_default(),
            line,
            message: format!(
                "duplicate id `{key}`: row {row} has the same id as row {earlier}{earlier_place}"
            ),
        }
        .into()
    }
}

fn earliest(a: Option<(u64, u64)>, b: Option<(u64, u64)>) -> Option<(u64, u64)> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

/// In rows sharing one hash (ascending), the first row whose key an earlier
/// row of the group has, with that earlier row.
fn duplicate_in(
    rows: &[u64],
    key_of: &mut impl FnMut(u64) -> Result<String>,
) -> Result<Option<(u64, u64)>> {
    if rows.len() < 2 {
        return Ok(None);
    }
    let keys: Vec<String> = rows.iter().map(|&r| key_of(r)).collect::<Result<_>>()?;
    for (j, key) in keys.iter().enumerate() {
        if let Some(i) = keys[..j].iter().position(|k| k == key) {
            return Ok(Some((rows[j], rows[i])));
        }
    }
    Ok(None)
}

enum Stream<'p> {
    File(BufReader<File>, &'p Path),
    Memory(std::vec::IntoIter<(u64, u64)>),
}

impl Stream<'_> {
    fn next(&mut self) -> Result<Option<(u64, u64)>> {
        match self {
            Stream::Memory(it) => Ok(it.next()),
            Stream::File(r, path) => {
                let mut b = [0u8; 16];
                match r.read_exact(&mut b) {
                    Ok(()) => Ok(Some((
                        u64::from_le_bytes(b[..8].try_into().expect("8 bytes")),
                        u64::from_le_bytes(b[8..].try_into().expect("8 bytes")),
                    ))),
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
                    Err(e) => Err(Error::io("read", *path, e)),
                }
            }
        }
    }
}

fn key_hash(key: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Check a CSV of the given ids with runs of `run` pairs; the error
    /// message if a duplicate is found.
    fn check(ids: &[&str], run: usize) -> Option<String> {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("in.csv");
        let mut text = String::from("id,text\n");
        for (i, id) in ids.iter().enumerate() {
            text.push_str(&format!("\"{id}\",t{i}\n"));
        }
        std::fs::write(&csv, text).unwrap();
        let sources = vec![Source::new(&csv, None).unwrap()];
        let spill = dir.path().join("spill");
        std::fs::create_dir(&spill).unwrap();
        let mut c = IdCheck::new(&sources, &spill);
        c.run = run;
        for row in RowReader::new(sources.clone(), false) {
            let row = row.unwrap();
            c.add(row.get("id").unwrap(), &row).unwrap();
        }
        assert_eq!(c.runs.len(), ids.len() / run, "runs spilled");
        let result = c.finish(|r| Ok(ids[r as usize - 1].to_string()));
        assert_eq!(
            std::fs::read_dir(&spill).unwrap().count(),
            0,
            "spill files removed"
        );
        result.err().map(|e| e.to_string())
    }

    #[test]
    fn finds_the_first_duplicate_in_input_order() {
        // (ids, the message after the file name, the earlier row's line).
        type Case<'a> = (&'a [&'a str], Option<(&'a str, &'a str)>);
        let cases: &[Case] = &[
            (&["a", "b", "c"], None),
            (&["é", "e", "é ", "E"], None),
            (
                &["a", "b", "a"],
                Some((
                    ":4: duplicate id `a`: row 3 has the same id as row 1 (",
                    ":2)",
                )),
            ),
            // Two duplicates: the one whose later row comes first wins.
            (
                &["x", "y", "z", "y", "x"],
                Some((
                    ":5: duplicate id `y`: row 4 has the same id as row 2 (",
                    ":3)",
                )),
            ),
            (
                &["k", "k", "k"],
                Some((
                    ":3: duplicate id `k`: row 2 has the same id as row 1 (",
                    ":2)",
                )),
            ),
        ];
        for run in [1, 2, 3, 100] {
            for (ids, want) in cases {
                let got = check(ids, run);
                match (want, &got) {
                    (None, None) => {}
                    (Some((msg, earlier)), Some(g)) if g.contains(msg) && g.ends_with(earlier) => {}
                    _ => panic!("{ids:?} in runs of {run}: got {got:?}, want {want:?}"),
                }
            }
        }
    }

    #[test]
    fn many_rows_over_many_runs() {
        let ids: Vec<String> = (0..2500).map(|i| format!("id-{}", i % 2400)).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let err = check(&refs, 1000).expect("a duplicate");
        assert!(
            err.contains("duplicate id `id-0`: row 2401 has the same id as row 1 ("),
            "{err}"
        );
        assert!(check(&refs[..2400], 1000).is_none());
    }

    #[test]
    fn an_empty_id_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("in.csv");
        std::fs::write(&csv, "id,text\na,x\n,y\n").unwrap();
        let sources = vec![Source::new(&csv, None).unwrap()];
        let mut c = IdCheck::new(&sources, dir.path());
        let rows: Vec<Row> = RowReader::new(sources.clone(), false)
            .map(Result::unwrap)
            .collect();
        c.add("a", &rows[0]).unwrap();
        let e = c.add("", &rows[1]).unwrap_err().to_string();
        assert!(
            e.contains("in.csv:3: row 2 has an empty id (input.id)"),
            "{e}"
        );
    }
}
