//! The store of one job: its sled database, outcome log and index, request
//! files, and the lock that keeps one process at a time on it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::error::db_err;
use super::*;

/// Restrict `path` to its owner (best effort: a file system without Unix
/// modes keeps its own rules).
pub fn owner_only(path: &Path, mode: u32) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
}

/// Appends outcomes to a job's log from any thread; each call is one write
/// and one fsync, so a caller that gathers many answers into one call
/// (a group commit) pays one disk flush for all of them.
pub struct OutcomeAppender {
    log: Arc<Mutex<Option<outcomes::Log>>>,
    path: PathBuf,
}

impl OutcomeAppender {
    /// Append `entries` and make them durable before returning.
    pub fn append(&self, entries: &[(String, Outcome)]) -> Result<(), StateError> {
        let mut guard = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let log = guard.as_mut().expect("loaded by outcome_appender");
        log.append(entries)
            .map_err(|source| StateError::io("append to", self.path.clone(), source))
    }
}

/// An open job folder, locked for this process.
pub struct JobStore {
    name: String,
    dir: PathBuf,
    db: sled::Db,
    /// Loaded on first use: `plan` and `status` never need the index.
    outcomes: Arc<Mutex<Option<outcomes::Log>>>,
    units: sled::Tree,
    /// Open request files of one generation, for lookups by row.
    lookup: Mutex<Option<(u64, requests::Lookup)>>,
    layout: Layout,
    _lock: File,
}

const KEY_VERSION: &[u8] = b"format_version";
const KEY_JOB: &[u8] = b"job";
const KEY_PLAN: &[u8] = b"plan";
const KEY_CANCELLED: &[u8] = b"cancelled";
/// The generation of a plan some of whose requests were answered outside
/// its batches (a rehearsal): it must be made again before a batch is sent.
const KEY_STALE_PLAN: &[u8] = b"stale_plan";
/// The job's deadline as fixed by its first `apply` (`FixedDeadline`).
const KEY_DEADLINE: &[u8] = b"deadline";

/// A deadline fixed by the job's first `apply`, with the spec's words it
/// was fixed from (new words fix it again).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FixedDeadline {
    pub text: String,
    pub deadline: crate::deadline::Deadline,
}
/// The length of `outcomes.jsonl` after the last append this state knows
/// of: a shorter file was cut or emptied.
const KEY_OUTCOMES_LEN: &[u8] = b"outcomes_len";

/// What a plan killed mid-way leaves (its scratch folder, up to hundreds
/// of MB, and its progress marker): with the lock in hand no plan is
/// running, so they are a dead process's, and go. Best effort: a folder
/// that cannot be removed now is tried again by the next command.
fn clear_leftovers(layout: &Layout) {
    if let Ok(entries) = std::fs::read_dir(layout.dir()) {
        for entry in entries.flatten() {
            if Layout::is_plan_scratch(&entry.file_name().to_string_lossy()) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let _ = std::fs::remove_file(layout.planning());
}

impl JobStore {
    /// Open (creating if needed) the job's folder and take its lock.
    pub fn open(root: &Path, job: &str) -> Result<JobStore, StateError> {
        let layout = Layout::new(root, job);
        let dir = layout.dir().to_path_buf();
        std::fs::create_dir_all(&dir)
            .map_err(|source| StateError::io("create state folder", dir.clone(), source))?;
        // The job folder holds prompts, answers and the spec: the owner's
        // only (0700), whatever the umask; files inside are then out of
        // anyone else's reach, whatever their own mode.
        owner_only(&dir, 0o700);
        refuse_links(&layout)?;
        let lock = take_lock(&layout.lock(), job)?;
        clear_leftovers(&layout);
        let db_dir = layout.db();
        let db = open_db(&db_dir)?;
        let version = db.get(KEY_VERSION).map_err(db_err(&db_dir))?;
        match version {
            None => {
                db.insert(KEY_VERSION, &FORMAT_VERSION.to_be_bytes())
                    .map_err(db_err(&db_dir))?;
            }
            Some(v) => {
                let found = v.as_ref().try_into().map(u32::from_be_bytes).map_err(|_| {
                    StateError::Corrupt {
                        job: job.into(),
                        message: "format version is unreadable".into(),
                    }
                })?;
                if found > FORMAT_VERSION {
                    return Err(StateError::TooNew {
                        job: job.into(),
                        found,
                    });
                }
            }
        }
        let units = db.open_tree("units").map_err(db_err(&db_dir))?;
        Ok(JobStore {
            name: job.to_string(),
            dir,
            db,
            outcomes: Arc::new(Mutex::new(None)),
            units,
            lookup: Mutex::new(None),
            layout,
            _lock: lock,
        })
    }

    /// Open an existing job; an error naming the job when there is none.
    pub fn open_existing(root: &Path, job: &str) -> Result<JobStore, StateError> {
        let layout = Layout::new(root, job);
        // A folder this user may not read is not "no job": say which
        // (`Path::exists` would answer false for both).
        match std::fs::metadata(layout.db()) {
            Ok(_) => JobStore::open(root, job),
            Err(e) => match Access::of(e.kind()) {
                Access::Missing => Err(StateError::NoJob {
                    job: job.into(),
                    root: root.to_path_buf(),
                }),
                Access::Denied => Err(StateError::Denied {
                    path: denied_at(&layout.db()),
                }),
                Access::Failed => Err(StateError::io("read", layout.db(), e)),
            },
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every path of the job folder.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    fn err(&self) -> impl Fn(sled::Error) -> StateError + '_ {
        db_err(&self.dir)
    }

    fn get_json<T: for<'de> Deserialize<'de>>(&self, key: &[u8]) -> Result<Option<T>, StateError> {
        match self.db.get(key).map_err(self.err())? {
            None => Ok(None),
            Some(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| StateError::Corrupt {
                        job: self.name.clone(),
                        message: format!("record `{}`: {e}", String::from_utf8_lossy(key)),
                    })
            }
        }
    }

    pub fn job(&self) -> Result<Option<JobRecord>, StateError> {
        self.get_json(KEY_JOB)
    }

    pub fn plan(&self) -> Result<Option<PlanRecord>, StateError> {
        self.get_json(KEY_PLAN)
    }

    /// Run `f` on the outcome log, loading it on first use.
    fn with_outcomes<T>(
        &self,
        f: impl FnOnce(&mut outcomes::Log) -> std::io::Result<T>,
    ) -> Result<T, StateError> {
        let io = |source| StateError::io("use", self.dir.join(outcomes::FILE), source);
        let mut guard = self.outcomes.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            *guard = Some(outcomes::Log::open(&self.dir).map_err(io)?);
        }
        f(guard.as_mut().expect("loaded above")).map_err(io)
    }

    /// Is the latest outcome of this fingerprint (as a 128-bit number) a
    /// success? Answered from the outcome index on disk.
    pub fn succeeded(&self, fingerprint: u128) -> Result<bool, StateError> {
        self.with_outcomes(|log| log.succeeded(fingerprint))
    }

    /// Size the outcome index for a job of `requests` requests up front.
    pub fn reserve_outcomes(&self, requests: u64) -> Result<(), StateError> {
        self.with_outcomes(|log| log.reserve(requests))
    }

    /// The latest outcome of a request, by fingerprint.
    pub fn outcome(&self, fingerprint: &str) -> Result<Option<Outcome>, StateError> {
        self.with_outcomes(|log| log.get(fingerprint))
    }

    pub fn result(&self, fingerprint: &str) -> Result<Option<ResultRecord>, StateError> {
        Ok(match self.outcome(fingerprint)? {
            Some(Outcome::Success(r)) => Some(r),
            _ => None,
        })
    }

    pub fn failure(&self, fingerprint: &str) -> Result<Option<FailureRecord>, StateError> {
        Ok(match self.outcome(fingerprint)? {
            Some(Outcome::Failure(f)) => Some(f),
            _ => None,
        })
    }

    /// Keep a result by fingerprint, durably.
    pub fn record_result(
        &self,
        fingerprint: &str,
        result: &ResultRecord,
    ) -> Result<(), StateError> {
        let entry = (fingerprint.to_string(), Outcome::Success(result.clone()));
        self.add_outcomes(&[entry])
    }

    /// A handle that appends to the outcome log from another thread (direct
    /// mode's group commit), loading the log first.
    pub fn outcome_appender(&self) -> Result<OutcomeAppender, StateError> {
        self.with_outcomes(|_| Ok(()))?;
        Ok(OutcomeAppender {
            log: self.outcomes.clone(),
            path: self.dir.join(outcomes::FILE),
        })
    }

    /// Record the outcome of every line of one unit's results (durably, in
    /// one append), then the unit's new record.
    pub fn merge_outcomes(
        &self,
        successes: &[(String, ResultRecord)],
        failures: &[(String, FailureRecord)],
        unit: &UnitRecord,
        generation: u64,
    ) -> Result<(), StateError> {
        let entries: Vec<(String, Outcome)> = successes
            .iter()
            .map(|(fp, r)| (fp.clone(), Outcome::Success(r.clone())))
            .chain(
                failures
                    .iter()
                    .map(|(fp, f)| (fp.clone(), Outcome::Failure(f.clone()))),
            )
            .collect();
        let len = self.with_outcomes(|log| log.append(&entries).map(|()| log.bytes()))?;
        self.db
            .insert(KEY_OUTCOMES_LEN, &len.to_be_bytes())
            .map_err(self.err())?;
        self.put_unit(generation, unit)
    }

    /// What is wrong with `outcomes.jsonl`, if anything: damaged lines, or a
    /// file shorter than the state knows it to be (cut or emptied).
    pub fn outcomes_damage(&self) -> Result<Option<StateError>, StateError> {
        let recorded = self
            .db
            .get(KEY_OUTCOMES_LEN)
            .map_err(self.err())?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map_or(0, u64::from_be_bytes);
        // Checked from the file itself: a damaged log must not be indexed
        // (a command that fails leaves every state file as it was).
        let (scan, len) = outcomes::scan(&self.dir)
            .map_err(|source| StateError::io("read", self.dir.join(outcomes::FILE), source))?;
        let mut problems = Vec::new();
        if len < recorded {
            problems.push(format!(
                "it holds {len} bytes, but {recorded} were written to it (cut or emptied)"
            ));
        }
        if let Some(first) = scan.first.first() {
            problems.push(format!(
                "{} damaged line{} (first: line {}, {})",
                scan.count,
                if scan.count == 1 { "" } else { "s" },
                first.line,
                first.why
            ));
        }
        if problems.is_empty() {
            return Ok(None);
        }
        Ok(Some(StateError::Damaged {
            job: self.name.clone(),
            file: self.dir.join(outcomes::FILE),
            message: problems.join("; "),
            repair: format!(
                "run `batchgrader resume {}`: it sets the damaged file aside and rebuilds the outcomes from the downloaded results (results/), downloading again or re-sending only what they cannot give",
                self.name
            ),
        }))
    }

    /// Set a damaged outcome log aside (`outcomes.jsonl.damaged-<time>`) and
    /// start a new one from its good lines. Returns the file set aside.
    pub fn rebuild_outcomes(&self) -> Result<PathBuf, StateError> {
        let aside = self
            .dir
            .join(format!("{}.damaged-{}", outcomes::FILE, now_secs()));
        let len = self.with_outcomes(|log| log.rebuild(&aside).map(|()| log.bytes()))?;
        self.db
            .insert(KEY_OUTCOMES_LEN, &len.to_be_bytes())
            .map_err(self.err())?;
        self.db.flush().map_err(self.err())?;
        Ok(aside)
    }

    /// Add outcomes (a repair), durably.
    pub fn add_outcomes(&self, entries: &[(String, Outcome)]) -> Result<(), StateError> {
        let len = self.with_outcomes(|log| log.append(entries).map(|()| log.bytes()))?;
        self.db
            .insert(KEY_OUTCOMES_LEN, &len.to_be_bytes())
            .map_err(self.err())?;
        self.db.flush().map_err(self.err())?;
        Ok(())
    }

    /// The files a plan lives in (its chunk files and request records) are
    /// all there, with the sizes the plan recorded. Missing or cut files are
    /// damage to the state, never "the input changed".
    pub fn check_plan_files(&self, plan: &PlanRecord, spec_file: &str) -> Result<(), StateError> {
        let damaged = |file: PathBuf, message: String| StateError::Damaged {
            job: self.name.clone(),
            file,
            message,
            repair: format!(
                "run `batchgrader apply {spec_file}` to plan the job again: rows already graded keep their answers (outcomes.jsonl)"
            ),
        };
        if let Err((file, message)) =
            requests::check_files(&self.plan_dir(plan.generation), plan.rows)
        {
            return Err(damaged(file, message));
        }
        for c in &plan.chunks {
            let path = self.layout.resolve(&c.file);
            match std::fs::metadata(&path) {
                Ok(m) if m.len() == c.bytes => {}
                Ok(m) => {
                    return Err(damaged(
                        path,
                        format!("holds {} bytes, the plan wrote {}", m.len(), c.bytes),
                    ));
                }
                Err(e) => return Err(damaged(path, format!("cannot be read ({e})"))),
            }
        }
        Ok(())
    }

    /// All units of a plan generation, by id.
    pub fn units(&self, generation: u64) -> Result<Vec<UnitRecord>, StateError> {
        let mut out = Vec::new();
        for kv in self.units.scan_prefix(generation.to_be_bytes()) {
            let (_, v) = kv.map_err(self.err())?;
            let u: UnitRecord = serde_json::from_slice(&v).map_err(|e| StateError::Corrupt {
                job: self.name.clone(),
                message: format!("unit record: {e}"),
            })?;
            out.push(u.upgrade());
        }
        Ok(out)
    }

    /// Record a unit's new state durably: the crash protocol relies on this
    /// write reaching the disk before the next side effect.
    pub fn put_unit(&self, generation: u64, unit: &UnitRecord) -> Result<(), StateError> {
        let mut key = [0u8; 12];
        key[..8].copy_from_slice(&generation.to_be_bytes());
        key[8..].copy_from_slice(&unit.id.to_be_bytes());
        self.units
            .insert(key, serde_json::to_vec(unit).expect("records serialize"))
            .map_err(self.err())?;
        self.db.flush().map_err(self.err())?;
        Ok(())
    }

    /// The folder of a plan generation: its chunk and request files.
    pub fn plan_dir(&self, generation: u64) -> PathBuf {
        self.layout.plan_dir(generation)
    }

    /// One request record of the current plan's generation.
    pub fn request(&self, generation: u64, row: u64) -> Result<Option<RequestRecord>, StateError> {
        let io =
            |source| StateError::io("read request records in", self.plan_dir(generation), source);
        let mut cached = self.lookup.lock().unwrap_or_else(|p| p.into_inner());
        if cached.as_ref().is_none_or(|(g, _)| *g != generation) {
            *cached = Some((
                generation,
                requests::Lookup::open(&self.plan_dir(generation)).map_err(io)?,
            ));
        }
        let (_, lookup) = cached.as_ref().expect("just set");
        lookup.get(row).map_err(io)
    }

    /// The request records of a generation, in row order.
    pub fn requests(
        &self,
        generation: u64,
    ) -> impl Iterator<Item = Result<RequestRecord, StateError>> + '_ {
        let dir = self.plan_dir(generation);
        let err = move |source| StateError::io("read request records in", dir.clone(), source);
        let records = requests::Records::open(&self.plan_dir(generation));
        let (records, first_err) = match records {
            Ok(r) => (Some(r), None),
            Err(e) => (None, Some(err.clone()(e))),
        };
        first_err.map(Err).into_iter().chain(
            records
                .into_iter()
                .flatten()
                .map(move |r| r.map_err(err.clone())),
        )
    }

    /// Drop the units of a generation that is no longer the plan.
    fn discard_units(&self, generation: u64) -> Result<(), StateError> {
        let mut batch = sled::Batch::default();
        for k in self.units.scan_prefix(generation.to_be_bytes()).keys() {
            batch.remove(k.map_err(self.err())?);
        }
        self.units.apply_batch(batch).map_err(self.err())
    }

    /// Make `plan` the job's plan (its files are already in `plan_dir`):
    /// switch the plan record in one write, then drop the previous
    /// generation's units.
    pub fn commit_plan(&self, job: &JobRecord, plan: &PlanRecord) -> Result<(), StateError> {
        let previous = self.plan()?.map(|p| p.generation);
        self.db.flush().map_err(self.err())?;
        let mut batch = sled::Batch::default();
        batch.insert(KEY_JOB, serde_json::to_vec(job).expect("records serialize"));
        batch.insert(
            KEY_PLAN,
            serde_json::to_vec(plan).expect("records serialize"),
        );
        self.db.apply_batch(batch).map_err(self.err())?;
        self.db.flush().map_err(self.err())?;
        if let Some(old) = previous.filter(|g| *g != plan.generation) {
            self.discard_units(old)?;
            self.db.flush().map_err(self.err())?;
        }
        Ok(())
    }

    /// When `cancel` stopped the job (Unix seconds); `None` while it may run.
    pub fn cancelled_at(&self) -> Result<Option<u64>, StateError> {
        self.get_json(KEY_CANCELLED)
    }

    /// Record (or clear) that the user cancelled the job.
    pub fn set_cancelled(&self, at: Option<u64>) -> Result<(), StateError> {
        match at {
            Some(t) => self
                .db
                .insert(
                    KEY_CANCELLED,
                    serde_json::to_vec(&t).expect("numbers serialize"),
                )
                .map(|_| ()),
            None => self.db.remove(KEY_CANCELLED).map(|_| ()),
        }
        .map_err(self.err())?;
        self.db.flush().map_err(self.err())?;
        Ok(())
    }

    /// The plan of `generation` had requests answered outside its batches
    /// (`apply --sample`): the next plan is made afresh, without them.
    /// Recorded and flushed before the first such request is sent.
    pub fn mark_plan_stale(&self, generation: u64) -> Result<(), StateError> {
        self.db
            .insert(
                KEY_STALE_PLAN,
                serde_json::to_vec(&generation).expect("numbers serialize"),
            )
            .map_err(self.err())?;
        self.db.flush().map_err(self.err())?;
        Ok(())
    }

    /// Whether the plan of `generation` must be made again before its
    /// batches are sent (a later plan has another generation).
    pub fn plan_is_stale(&self, generation: u64) -> Result<bool, StateError> {
        Ok(self.get_json::<u64>(KEY_STALE_PLAN)? == Some(generation))
    }

    /// The deadline the job's first `apply` fixed, if any.
    pub fn fixed_deadline(&self) -> Result<Option<FixedDeadline>, StateError> {
        self.get_json(KEY_DEADLINE)
    }

    /// Fix the job's deadline (flushed before the run relies on it).
    pub fn fix_deadline(&self, d: &FixedDeadline) -> Result<(), StateError> {
        self.db
            .insert(
                KEY_DEADLINE,
                serde_json::to_vec(d).expect("records serialize"),
            )
            .map_err(self.err())?;
        self.db.flush().map_err(self.err())?;
        Ok(())
    }

    /// Update only the job record (e.g. a new spec path with an unchanged plan).
    pub fn put_job(&self, job: &JobRecord) -> Result<(), StateError> {
        self.db
            .insert(KEY_JOB, serde_json::to_vec(job).expect("records serialize"))
            .map_err(self.err())?;
        self.db.flush().map_err(self.err())?;
        Ok(())
    }
}

/// Open the sled database. Our own lock is already held, and every command
/// opens a job's store once, so sled's own lock is free.
fn open_db(db_dir: &Path) -> Result<sled::Db, StateError> {
    remove_unfinished_snapshots(db_dir);
    sled::Config::new()
        .path(db_dir)
        .cache_capacity(16 << 20)
        .open()
        .map_err(db_err(db_dir))
}

/// sled 0.34 writes a snapshot to `snap.<lsn>.generating`, fsyncs it and
/// renames it to `snap.<lsn>`: the rename is the commit. A process killed
/// before the rename leaves the unfinished file, and sled's next open takes
/// it for the newest snapshot, fails its checksum and refuses the whole
/// database as corrupt, for good (spacejam/sled#1527; found by bench/chaos,
/// which killed a run during an open). The unfinished file never held a
/// committed snapshot, so it goes before sled opens: the last renamed
/// snapshot and the log after it are what sled then reads.
fn remove_unfinished_snapshots(db_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(db_dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// No file at the top of the job's folder, nor the state's ledger, may be a
/// symbolic link: a link planted there would make the state read another
/// file as its own, or write to it (`nofollow` refuses the writes too).
fn refuse_links(layout: &Layout) -> Result<(), StateError> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(layout.dir())
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    paths.push(layout.ledger());
    paths.sort();
    match paths
        .into_iter()
        .find(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink()))
    {
        Some(path) => Err(StateError::Link { path }),
        None => Ok(()),
    }
}

/// Take the job's lock file. The OS releases it when the process dies, so a
/// crash never leaves a stale lock; the file's text names the holder.
fn take_lock(path: &Path, job: &str) -> Result<File, StateError> {
    let path = path.to_path_buf();
    let io = |action, source| StateError::io(action, path.clone(), source);
    let mut file = crate::nofollow::open(
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false),
        &path,
    )
    .map_err(|e| io("open lock file", e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(StateError::Locked {
                job: job.into(),
                holder: if holder.is_empty() {
                    "holder unknown".into()
                } else {
                    holder.to_string()
                },
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io("lock", e)),
    }
    let since = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    file.set_len(0).map_err(|e| io("write lock file", e))?;
    file.rewind().map_err(|e| io("write lock file", e))?;
    write!(file, "pid {} since {since}", std::process::id())
        .map_err(|e| io("write lock file", e))?;
    file.flush().map_err(|e| io("write lock file", e))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::super::error::db_message;
    use super::*;

    /// sled's background threads close its lock file a moment after the
    /// last handle is dropped. Commands open a store once per process; a
    /// test that opens one again waits for that first.
    fn wait_for_sled(root: &Path, job: &str) {
        let file = Layout::new(root, job).db().join("db");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while File::open(&file).unwrap().try_lock().is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "sled kept {file:?} locked"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    #[test]
    fn second_open_is_refused_with_holder() {
        let tmp = tempfile::tempdir().unwrap();
        let a = JobStore::open(tmp.path(), "j").unwrap();
        let err = JobStore::open(tmp.path(), "j").err().unwrap();
        assert!(matches!(err, StateError::Locked { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("in use"), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        drop(a);
        // The job's lock goes with the handle.
        drop(take_lock(&Layout::new(tmp.path(), "j").lock(), "j").unwrap());
        wait_for_sled(tmp.path(), "j");
        JobStore::open(tmp.path(), "j").unwrap();
    }

    #[test]
    fn newer_format_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let s = JobStore::open(tmp.path(), "j").unwrap();
            s.db.insert(KEY_VERSION, &(FORMAT_VERSION + 1).to_be_bytes())
                .unwrap();
            s.db.flush().unwrap();
        }
        wait_for_sled(tmp.path(), "j");
        let err = JobStore::open(tmp.path(), "j").err().unwrap();
        assert!(matches!(err, StateError::TooNew { .. }), "{err}");
    }

    #[test]
    fn database_errors_are_said_in_words() {
        let cases: [(sled::Error, &str); 3] = [
            (
                sled::Error::Corruption { at: None, bt: () },
                "its files are damaged (the database found corrupted data)",
            ),
            (
                sled::Error::Unsupported("a newer format".into()),
                "a newer format",
            ),
            (
                sled::Error::Io(std::io::Error::other("disk gone")),
                "disk gone",
            ),
        ];
        for (e, want) in cases {
            let got = db_message(&e);
            assert_eq!(got, want);
            assert!(!got.contains("backtrace") && !got.contains("None"), "{got}");
        }
    }

    #[test]
    fn custom_ids_match_the_provider_pattern() {
        for row in [1, 42, u64::MAX] {
            let id = custom_id(row);
            assert!(
                id.len() <= 64
                    && id
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            );
        }
    }
}
