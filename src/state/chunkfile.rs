//! The one writer of request files (plan chunks and retry chunks): lines
//! are hashed as they are written and the file is fsynced before its hash
//! is handed back, so a recorded sha256 always describes bytes on disk.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// A request file being written.
pub struct ChunkWriter {
    w: BufWriter<File>,
    hash: Sha256,
    path: PathBuf,
    bytes: u64,
    lines: u64,
}

/// A request file written whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenChunk {
    pub sha256: String,
    pub bytes: u64,
    pub lines: u64,
}

impl ChunkWriter {
    pub fn create(path: &Path) -> std::io::Result<ChunkWriter> {
        Ok(ChunkWriter {
            w: BufWriter::with_capacity(1 << 20, crate::nofollow::create(path)?),
            hash: Sha256::new(),
            path: path.to_path_buf(),
            bytes: 0,
            lines: 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one line; `line` has no newline, one is added.
    pub fn push(&mut self, line: &[u8]) -> std::io::Result<()> {
        self.hash.update(line);
        self.hash.update(b"\n");
        self.w.write_all(line)?;
        self.w.write_all(b"\n")?;
        self.bytes += line.len() as u64 + 1;
        self.lines += 1;
        Ok(())
    }

    /// Append bytes that already end with their newline (a copied line).
    pub fn push_raw(&mut self, line_with_newline: &[u8]) -> std::io::Result<()> {
        self.hash.update(line_with_newline);
        self.w.write_all(line_with_newline)?;
        self.bytes += line_with_newline.len() as u64;
        self.lines += 1;
        Ok(())
    }

    /// Flush, fsync, and return the file's hash.
    pub fn finish(self) -> std::io::Result<WrittenChunk> {
        self.w
            .into_inner()
            .map_err(|e| e.into_error())?
            .sync_all()?;
        Ok(WrittenChunk {
            sha256: hex(&self.hash.finalize()),
            bytes: self.bytes,
            lines: self.lines,
        })
    }
}

/// The sha256 of a file, to check a request file before it is sent.
pub fn sha256_of(path: &Path) -> std::io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(hex(&h.finalize()))
}

use crate::hex::lower as hex;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_matches_the_bytes_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.jsonl");
        let mut w = ChunkWriter::create(&p).unwrap();
        w.push(b"{\"a\":1}").unwrap();
        w.push_raw(b"{\"b\":2}\n").unwrap();
        let done = w.finish().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"{\"a\":1}\n{\"b\":2}\n");
        assert_eq!(done.sha256, sha256_of(&p).unwrap());
        assert_eq!((done.bytes, done.lines), (16, 2));
        // sha256("") is well known; a different content gives another hash.
        assert_ne!(
            done.sha256,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
