//! Where file contents and `state.json` live: a data directory, or memory.
//!
//! Only ids the server generated itself ever reach these functions (handlers
//! look ids up in the index first), so ids are safe to use as file names.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Cursor};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use axum::body::{Body, Bytes};
use tokio::io::AsyncWriteExt;

use super::state::{DB_VERSION, Db};

const STATE_FILE: &str = "state.json";
const FILES_DIR: &str = "files";
const PART_SUFFIX: &str = ".part";

/// File contents. On disk they are streamed in and out, so a 200 MB upload
/// never sits in memory; the memory store is for demos and small tests.
pub enum Blobs {
    Disk(PathBuf),
    Memory(Mutex<HashMap<String, Bytes>>),
}

/// An upload being received.
pub struct Staging {
    inner: StagingInner,
    pub bytes: u64,
}

enum StagingInner {
    Disk {
        part: PathBuf,
        file: tokio::fs::File,
    },
    Memory(Vec<u8>),
}

impl Staging {
    pub async fn write(&mut self, chunk: &[u8]) -> io::Result<()> {
        match &mut self.inner {
            StagingInner::Disk { file, .. } => file.write_all(chunk).await?,
            StagingInner::Memory(buf) => buf.extend_from_slice(chunk),
        }
        self.bytes += chunk.len() as u64;
        Ok(())
    }
}

impl Blobs {
    pub fn open(data_dir: Option<&Path>) -> io::Result<Blobs> {
        let Some(dir) = data_dir else {
            return Ok(Blobs::Memory(Mutex::new(HashMap::new())));
        };
        let files = dir.join(FILES_DIR);
        std::fs::create_dir_all(&files)?;
        // Uploads cut short by a previous process's death.
        for entry in std::fs::read_dir(&files)? {
            let path = entry?.path();
            if path.to_string_lossy().ends_with(PART_SUFFIX) {
                let _ = std::fs::remove_file(path);
            }
        }
        Ok(Blobs::Disk(files))
    }

    fn memory(&self) -> Option<std::sync::MutexGuard<'_, HashMap<String, Bytes>>> {
        match self {
            Blobs::Memory(map) => Some(map.lock().unwrap_or_else(|e| e.into_inner())),
            Blobs::Disk(_) => None,
        }
    }

    pub async fn stage(&self, id: &str) -> io::Result<Staging> {
        let inner = match self {
            Blobs::Disk(dir) => {
                let part = dir.join(format!("{id}{PART_SUFFIX}"));
                let file = tokio::fs::File::create(&part).await?;
                StagingInner::Disk { part, file }
            }
            Blobs::Memory(_) => StagingInner::Memory(Vec::new()),
        };
        Ok(Staging { inner, bytes: 0 })
    }

    pub async fn commit(&self, id: &str, staging: Staging) -> io::Result<()> {
        match (self, staging.inner) {
            (Blobs::Disk(dir), StagingInner::Disk { part, mut file }) => {
                file.flush().await?;
                drop(file);
                tokio::fs::rename(part, dir.join(id)).await
            }
            (Blobs::Memory(_), StagingInner::Memory(buf)) => {
                if let Some(mut map) = self.memory() {
                    map.insert(id.to_string(), Bytes::from(buf));
                }
                Ok(())
            }
            _ => Err(io::Error::other("staging does not belong to this store")),
        }
    }

    pub async fn discard(&self, staging: Staging) {
        if let StagingInner::Disk { part, file } = staging.inner {
            drop(file);
            let _ = tokio::fs::remove_file(part).await;
        }
    }

    /// Blocking: for the background workers.
    pub fn put(&self, id: &str, data: Vec<u8>) -> io::Result<()> {
        match self {
            Blobs::Disk(dir) => {
                let part = dir.join(format!("{id}{PART_SUFFIX}"));
                std::fs::write(&part, data)?;
                std::fs::rename(part, dir.join(id))
            }
            Blobs::Memory(_) => {
                if let Some(mut map) = self.memory() {
                    map.insert(id.to_string(), Bytes::from(data));
                }
                Ok(())
            }
        }
    }

    /// Blocking: for the background workers.
    pub fn reader(&self, id: &str) -> io::Result<Box<dyn BufRead + Send>> {
        match self {
            Blobs::Disk(dir) => Ok(Box::new(BufReader::with_capacity(
                1 << 16,
                std::fs::File::open(dir.join(id))?,
            ))),
            Blobs::Memory(_) => self
                .memory()
                .and_then(|map| map.get(id).cloned())
                .map(|bytes| Box::new(Cursor::new(bytes)) as Box<dyn BufRead + Send>)
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, id.to_string())),
        }
    }

    pub async fn body(&self, id: &str) -> io::Result<Body> {
        match self {
            Blobs::Disk(dir) => {
                let file = tokio::fs::File::open(dir.join(id)).await?;
                // reqwest's body is the only file-streaming `http_body::Body`
                // among our dependencies (axum alone needs a `Stream` type we
                // cannot name without tokio-util).
                Ok(Body::new(reqwest::Body::from(file)))
            }
            Blobs::Memory(_) => self
                .memory()
                .and_then(|map| map.get(id).cloned())
                .map(Body::from)
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, id.to_string())),
        }
    }

    pub async fn remove(&self, id: &str) -> io::Result<()> {
        match self {
            Blobs::Disk(dir) => match tokio::fs::remove_file(dir.join(id)).await {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
            Blobs::Memory(_) => {
                if let Some(mut map) = self.memory() {
                    map.remove(id);
                }
                Ok(())
            }
        }
    }
}

/// Reads `state.json`; `None` when the directory is new.
pub fn load_db(data_dir: &Path) -> io::Result<Option<Db>> {
    let path = data_dir.join(STATE_FILE);
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let db: Db = serde_json::from_slice(&text).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })?;
    if db.version != DB_VERSION {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: state version {} is not {DB_VERSION}",
                path.display(),
                db.version
            ),
        ));
    }
    Ok(Some(db))
}

/// Temp file + rename, so a reader (or a restart) never sees half a file.
/// No fsync: the state must survive the process dying, not the machine.
pub async fn save_db(data_dir: &Path, json: Vec<u8>) -> io::Result<()> {
    let tmp = data_dir.join(format!("{STATE_FILE}.tmp"));
    tokio::fs::write(&tmp, json).await?;
    tokio::fs::rename(tmp, data_dir.join(STATE_FILE)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn read_all(blobs: &Blobs, id: &str) -> Vec<u8> {
        let mut out = Vec::new();
        blobs.reader(id).unwrap().read_to_end(&mut out).unwrap();
        out
    }

    async fn roundtrip(blobs: Blobs) {
        let mut staging = blobs.stage("file-a").await.unwrap();
        staging.write(b"hello ").await.unwrap();
        staging.write(b"world").await.unwrap();
        assert_eq!(staging.bytes, 11);
        blobs.commit("file-a", staging).await.unwrap();
        assert_eq!(read_all(&blobs, "file-a"), b"hello world");

        let staging = blobs.stage("file-b").await.unwrap();
        blobs.discard(staging).await;
        assert!(blobs.reader("file-b").is_err());

        blobs.put("file-c", b"out".to_vec()).unwrap();
        assert_eq!(read_all(&blobs, "file-c"), b"out");
        blobs.remove("file-c").await.unwrap();
        blobs.remove("file-c").await.unwrap();
        assert!(blobs.reader("file-c").is_err());
    }

    #[tokio::test]
    async fn memory_blobs() {
        roundtrip(Blobs::open(None).unwrap()).await;
    }

    #[tokio::test]
    async fn disk_blobs_and_state() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(FILES_DIR)).unwrap();
        std::fs::write(dir.path().join(FILES_DIR).join("x.part"), b"junk").unwrap();
        roundtrip(Blobs::open(Some(dir.path())).unwrap()).await;
        assert!(!dir.path().join(FILES_DIR).join("x.part").exists());

        assert!(load_db(dir.path()).unwrap().is_none());
        let mut db = Db::new();
        db.next_seq = 7;
        save_db(dir.path(), serde_json::to_vec(&db).unwrap())
            .await
            .unwrap();
        assert_eq!(load_db(dir.path()).unwrap().unwrap().next_seq, 7);

        std::fs::write(dir.path().join(STATE_FILE), br#"{"version": 99}"#).unwrap();
        assert!(load_db(dir.path()).is_err());
    }
}
