//! Shared server state, persistence, and the per-batch background drivers.

use std::collections::HashMap;
use std::collections::btree_map::Entry;
use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use super::SimConfig;
use super::answers::Plain;
use super::api_error::ApiError;
use super::batch_file::{self, Flakes, RunClock, RunContext, Unrun};
use super::faults::{CallFault, CallRates, call_fault, token_limit_error};
use super::hash::{hash64, unit};
use super::state::{
    BatchFault, BatchRecord, Db, FILE_LIFETIME_SECS, FileRecord, LineError, Outcome, Step,
    Validated, Validation, next_step,
};
use super::store::{self, Blobs};

/// A driver whose step failed (disk full…) tries again after this.
const DRIVER_RETRY: Duration = Duration::from_secs(1);

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub struct App {
    pub config: SimConfig,
    /// `config.answers` ready for `/v1/chat/completions`.
    pub answers: Plain,
    db: Mutex<Db>,
    pub blobs: Blobs,
    /// Serialises `state.json` writes so an older snapshot never lands last.
    persist_lock: tokio::sync::Mutex<()>,
    /// Drawn anew by every server: mixed into ids, so that two memory-only
    /// servers never hand out the same id, and into the injected-error draw.
    nonce: u64,
    request_ids: AtomicU64,
    api_calls: AtomicU64,
    /// Running drivers, by batch id; a cancel wakes the batch's driver.
    drivers: Mutex<HashMap<String, Arc<Notify>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    shutdown: watch::Sender<bool>,
}

/// A value no other server (in this process, another one, or a restart)
/// shares: std's `RandomState` keys come from the OS and change with every
/// instance; the clock, pid and a counter are added for good measure.
fn server_nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static SERVERS: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(now_ms());
    hasher.write_u32(std::process::id());
    hasher.write_u64(SERVERS.fetch_add(1, Ordering::Relaxed));
    hasher.finish()
}

fn guard<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep serving.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl App {
    pub fn open(config: SimConfig) -> io::Result<Arc<App>> {
        let db = match &config.data_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                store::load_db(dir)?.unwrap_or_else(Db::new)
            }
            None => Db::new(),
        };
        let blobs = Blobs::open(config.data_dir.as_deref())?;
        let nonce = server_nonce();
        Ok(Arc::new(App {
            answers: config.answers.plain(),
            config,
            db: Mutex::new(db),
            blobs,
            persist_lock: tokio::sync::Mutex::new(()),
            nonce,
            request_ids: AtomicU64::new(0),
            api_calls: AtomicU64::new(0),
            drivers: Mutex::new(HashMap::new()),
            tasks: Mutex::new(Vec::new()),
            shutdown: watch::Sender::new(false),
        }))
    }

    pub fn db(&self) -> MutexGuard<'_, Db> {
        guard(&self.db)
    }

    pub async fn persist(&self) -> io::Result<()> {
        let Some(dir) = &self.config.data_dir else {
            return Ok(());
        };
        let _writer = self.persist_lock.lock().await;
        let json = serde_json::to_vec(&*self.db()).map_err(io::Error::other)?;
        store::save_db(dir, json).await
    }

    /// Saves the state and (for a new or cancelled batch) wakes its driver,
    /// in a task of its own: if the client hangs up, axum drops the handler
    /// future, and a half-done commit would leave a batch no driver runs.
    pub async fn commit(self: &Arc<Self>, wake: Option<String>) -> io::Result<()> {
        let app = self.clone();
        tokio::spawn(async move {
            let saved = app.persist().await;
            if let Some(id) = wake {
                app.wake_driver(&id);
            }
            saved
        })
        .await
        .map_err(io::Error::other)?
    }

    /// A fresh id such as `file-sim-…`; `db` supplies the sequence number.
    pub fn new_id(&self, db: &mut Db, prefix: &str) -> (String, u64) {
        let seq = db.take_seq();
        let h = hash64(&[
            prefix.as_bytes(),
            &self.nonce.to_le_bytes(),
            &seq.to_le_bytes(),
        ]);
        (format!("{prefix}{h:016x}"), seq)
    }

    pub fn next_request_id(&self) -> String {
        format!(
            "req_sim_{}",
            self.request_ids.fetch_add(1, Ordering::Relaxed) + 1
        )
    }

    /// The error to answer instead of serving this call, if one is due.
    /// The draw mixes in the server's `nonce`, so a restarted server (the
    /// in-process one restarts with every `resume`) fails other calls than
    /// the last one did, as a real provider would.
    pub fn injected_error(&self) -> Option<ApiError> {
        let config = &self.config;
        let rates = CallRates {
            rate_limit: config.rate_limit_rate,
            server_error: config.server_error_rate,
            either: config.http_error_rate,
        };
        if !rates.any() {
            return None;
        }
        let call = self.api_calls.fetch_add(1, Ordering::Relaxed).to_le_bytes();
        let (seed, nonce) = (config.seed.to_le_bytes(), self.nonce.to_le_bytes());
        let roll = unit(hash64(&[b"http", &seed, &nonce, &call]));
        let pick = hash64(&[b"http-status", &seed, &nonce, &call]);
        let fault = call_fault(&rates, roll, pick)?;
        let mut db = self.db();
        match fault {
            CallFault::RateLimit => db.counters.injected_429 += 1,
            CallFault::ServerError(_) => db.counters.injected_5xx += 1,
        }
        Some(fault.error())
    }

    /// Whether the create that made batch number `seq` answers 500 once the
    /// batch is saved. Drawn like the injected HTTP errors.
    pub fn create_commit_fails(&self, seq: u64) -> bool {
        let rate = self.config.create_commit_error_rate;
        rate > 0.0
            && unit(hash64(&[
                b"commit",
                &self.config.seed.to_le_bytes(),
                &self.nonce.to_le_bytes(),
                &seq.to_le_bytes(),
            ])) < rate
    }

    /// Whether the create that made batch number `seq` makes a second one
    /// behind its answer (`twin_create_rate`). Drawn like the commit errors.
    pub fn create_twins(&self, seq: u64) -> bool {
        let rate = self.config.twin_create_rate;
        rate > 0.0
            && unit(hash64(&[
                b"twin",
                &self.config.seed.to_le_bytes(),
                &self.nonce.to_le_bytes(),
                &seq.to_le_bytes(),
            ])) < rate
    }

    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Starts drivers for every batch that still owes work (after a restart).
    pub fn resume_drivers(self: &Arc<Self>) {
        let now = now_ms();
        let pending: Vec<String> = self
            .db()
            .batches
            .values()
            .filter(|b| next_step(b, now) != Step::Done)
            .map(|b| b.id.clone())
            .collect();
        pending.iter().for_each(|id| self.wake_driver(id));
    }

    /// Wakes the batch's driver, or starts one if none is running.
    pub fn wake_driver(self: &Arc<Self>, id: &str) {
        if *self.shutdown.borrow() {
            return;
        }
        let mut drivers = guard(&self.drivers);
        if let Some(notify) = drivers.get(id) {
            notify.notify_one();
            return;
        }
        let notify = Arc::new(Notify::new());
        drivers.insert(id.to_string(), notify.clone());
        let task = tokio::spawn(drive(self.clone(), id.to_string(), notify));
        let mut tasks = guard(&self.tasks);
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }

    pub fn signal_stop(&self) {
        self.shutdown.send_replace(true);
    }

    /// Stops the drivers; each finishes the step it is in, so no half-written
    /// result is left for the next server on the same data directory. The
    /// last save keeps the counters that change without one (injected errors).
    pub async fn stop(&self) {
        self.signal_stop();
        let tasks = std::mem::take(&mut *guard(&self.tasks));
        for task in tasks {
            let _ = task.await;
        }
        if let Err(e) = self.persist().await {
            eprintln!("simulate-server: saving the state on shutdown: {e}");
        }
    }

    /// The driver leaves only when the batch owes nothing. The check happens
    /// under the driver-map lock, so a cancel that lands meanwhile either is
    /// seen here or finds no driver and starts a new one.
    fn retire_if_done(&self, id: &str) -> bool {
        let mut drivers = guard(&self.drivers);
        let done = match self.db().batches.get(id) {
            Some(batch) => next_step(batch, now_ms()) == Step::Done,
            None => true,
        };
        if done {
            drivers.remove(id);
        }
        done
    }

    fn retire(&self, id: &str) {
        guard(&self.drivers).remove(id);
    }

    async fn validate(self: &Arc<Self>, id: &str) -> io::Result<()> {
        let (batch, flakes) = {
            let db = self.db();
            let Some(batch) = db.batches.get(id).cloned() else {
                return Ok(());
            };
            let flakes = flakes(&db, &batch);
            (batch, flakes)
        };
        let batch_fault = batch.fault;
        let app = self.clone();
        let result = tokio::task::spawn_blocking(move || {
            let ctx = run_context(&batch, &flakes, app.config.extra_prompt_tokens);
            match app.blobs.reader(&batch.input_file_id) {
                Ok(reader) => {
                    let mut ids = Vec::new();
                    let result = batch_file::validate(reader, &ctx, &mut ids)?;
                    // Kept apart from `state.json`, which is rewritten often:
                    // only `/_sim/stats` reads them.
                    app.blobs
                        .put(&custom_ids_blob(&batch.id), ids.join("\n").into_bytes())?;
                    Ok(result)
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Validation::Invalid {
                    errors: vec![LineError {
                        code: "invalid_file".into(),
                        message: "The input file was deleted before the batch could read it."
                            .into(),
                        line: None,
                    }],
                }),
                Err(e) => Err(e),
            }
        })
        .await
        .map_err(io::Error::other)??;
        // A file that is broken on its own reports that; a good one meets the
        // full quota.
        let result = match result {
            Validation::Valid { model, .. } if batch_fault == Some(BatchFault::TokenLimit) => {
                Validation::Invalid {
                    errors: vec![token_limit_error(model.as_deref())],
                }
            }
            other => other,
        };
        if let Some(batch) = self.db().batches.get_mut(id)
            && batch.validated.is_none()
        {
            batch.validated = Some(Validated {
                done_ms: now_ms(),
                result,
            });
        }
        self.persist().await
    }

    async fn materialize(self: &Arc<Self>, id: &str, executed: u64) -> io::Result<()> {
        let (batch, flakes, output_id, error_id) = {
            let mut db = self.db();
            let Some(batch) = db.batches.get(id).cloned() else {
                return Ok(());
            };
            let flakes = flakes(&db, &batch);
            let (output_id, _) = self.new_id(&mut db, "file-sim-");
            let (error_id, _) = self.new_id(&mut db, "file-sim-");
            (batch, flakes, output_id, error_id)
        };
        let app = self.clone();
        let (out_name, err_name) = (output_id.clone(), error_id.clone());
        let results = tokio::task::spawn_blocking(move || -> io::Result<_> {
            let ctx = run_context(&batch, &flakes, app.config.extra_prompt_tokens);
            let (start_ms, span_ms) = batch.run_window().unwrap_or_default();
            let clock = RunClock { start_ms, span_ms };
            let reader = match app.blobs.reader(&batch.input_file_id) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    Box::new(io::empty()) as Box<dyn io::BufRead + Send>
                }
                other => other?,
            };
            let results = batch_file::run(reader, &ctx, batch.total(), executed, &clock)?;
            let output_bytes = results.output.len() as u64;
            let error_bytes = results.errors.len() as u64;
            if output_bytes > 0 {
                app.blobs.put(&out_name, results.output)?;
            }
            if error_bytes > 0 {
                app.blobs.put(&err_name, results.errors)?;
            }
            Ok((
                output_bytes,
                error_bytes,
                results.counts,
                results.usage,
                results.flaked,
            ))
        })
        .await
        .map_err(io::Error::other)??;
        let (output_bytes, error_bytes, counts, usage, flaked) = results;

        let now = now_ms();
        let mut unused = Vec::new();
        let mut stale = Vec::new();
        {
            let mut db = self.db();
            let still_wanted = db
                .batches
                .get(id)
                .is_some_and(|b| next_step(b, now) == Step::Materialize { executed });
            if still_wanted {
                let created_at = now / 1000;
                let add_file = |db: &mut Db, file_id: &str, bytes: u64, kind: &str| {
                    if bytes == 0 {
                        return None;
                    }
                    let seq = db.take_seq();
                    db.files.insert(
                        file_id.to_string(),
                        FileRecord {
                            id: file_id.to_string(),
                            seq,
                            bytes,
                            created_at,
                            expires_at: Some(created_at + FILE_LIFETIME_SECS),
                            filename: format!("{id}_{kind}.jsonl"),
                            purpose: "batch_output".into(),
                        },
                    );
                    Some(file_id.to_string())
                };
                let output_file_id = add_file(&mut db, &output_id, output_bytes, "output");
                let error_file_id = add_file(&mut db, &error_id, error_bytes, "error");
                let outcome = Outcome {
                    ready_ms: now,
                    executed,
                    output_file_id,
                    error_file_id,
                    counts,
                    usage,
                };
                let previous = db
                    .batches
                    .get_mut(id)
                    .and_then(|batch| batch.outcome.replace(outcome));
                if let Some(previous) = previous {
                    stale.extend(previous.output_file_id);
                    stale.extend(previous.error_file_id);
                }
                for file_id in &stale {
                    db.files.remove(file_id);
                }
                // Saved with the outcome: the request succeeds from now on,
                // in any other batch and after a restart.
                for key in flaked {
                    if let Entry::Vacant(entry) = db.flaked.entry(key) {
                        entry.insert(id.to_string());
                        db.counters.flaked_requests += 1;
                    }
                }
            } else {
                unused.extend([output_id, error_id]);
            }
        }
        self.persist().await?;
        for file_id in unused.iter().chain(&stale) {
            self.blobs.remove(file_id).await?;
        }
        Ok(())
    }
}

/// Where the `custom_id`s of a validated batch are kept (one a line). Not a
/// file id, so no Files endpoint can reach it.
pub fn custom_ids_blob(batch_id: &str) -> String {
    format!("{batch_id}.custom_ids")
}

/// The `custom_id`s of a batch, `None` until it has been validated.
pub fn read_custom_ids(app: &App, batch_id: &str) -> io::Result<Option<Vec<String>>> {
    let mut reader = match app.blobs.reader(&custom_ids_blob(batch_id)) {
        Ok(reader) => reader,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut text = String::new();
    reader.read_to_string(&mut text)?;
    Ok(Some(text.lines().map(String::from).collect()))
}

/// What `batch_file` needs to know of the flakes so far. Copied only when
/// this batch can flake at all.
fn flakes(db: &Db, batch: &BatchRecord) -> Flakes {
    let rate = batch.request_flake_rate;
    Flakes {
        rate,
        done: if rate > 0.0 {
            db.flaked.clone()
        } else {
            Default::default()
        },
    }
}

fn run_context<'a>(
    batch: &'a BatchRecord,
    flakes: &'a Flakes,
    extra_prompt_tokens: u64,
) -> RunContext<'a> {
    RunContext {
        batch_id: &batch.id,
        endpoint: &batch.endpoint,
        seed: batch.seed,
        request_failure_rate: batch.request_failure_rate,
        reject_rate: batch.reject_rate,
        // Requests left over without a cancel are those an expiry stopped.
        unrun: if batch.cancel_ms.is_some() {
            Unrun::Cancelled
        } else {
            Unrun::Expired
        },
        flakes,
        answers: batch.answers.plain(),
        extra_prompt_tokens,
    }
}

/// Does a batch's background work when it falls due: validation right after
/// creation, the result files when the run ends or a cancel arrives.
async fn drive(app: Arc<App>, id: String, notify: Arc<Notify>) {
    let mut shutdown = app.shutdown_signal();
    loop {
        if *shutdown.borrow() {
            app.retire(&id);
            return;
        }
        let step = match app.db().batches.get(&id) {
            Some(batch) => next_step(batch, now_ms()),
            None => Step::Done,
        };
        let result = match step {
            Step::Done => {
                if app.retire_if_done(&id) {
                    return;
                }
                continue;
            }
            Step::WaitUntil(at) => {
                let wait = Duration::from_millis(at.saturating_sub(now_ms()));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = notify.notified() => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            Step::Validate => app.validate(&id).await,
            Step::Materialize { executed } => app.materialize(&id, executed).await,
        };
        if let Err(e) = result {
            eprintln!("simulate-server: batch {id}: {e}; retrying");
            tokio::select! {
                _ = tokio::time::sleep(DRIVER_RETRY) => {}
                _ = shutdown.changed() => {}
            }
        }
    }
}
