//! The Message Batches simulation's state: batches with their requests,
//! their timing and faults decided at creation, and the results made from
//! them. Kept in memory, and in `<data_dir>/anthropic/` when a data folder
//! is given.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, UNIX_EPOCH};

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Failure;
use crate::simulate::SimConfig;
use crate::simulate::answers::{
    AnswerShape, Plain, cached_tokens, complete, complete_constrained, prefix_tokens,
};
use crate::simulate::app::now_ms;
use crate::simulate::faults::{CallFault, CallRates, call_fault};
use crate::simulate::hash::{SplitMix64, hash_json, hash64, unit};

/// Results can be read for 29 days after creation (batch processing guide).
const RETENTION_MS: u64 = 29 * 24 * 3600 * 1000;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SimBatch {
    pub id: String,
    pub seq: u64,
    pub created_ms: u64,
    pub requests: u64,
    pub cancel_ms: Option<u64>,
    /// Half its requests end `expired` (`expire_every`).
    pub expires_half: bool,
    /// Indexes of requests that fail this once (`request_flake_rate`).
    pub flaked: Vec<u64>,
    pub deleted: bool,
    /// Timing and rates as they were when it was made.
    pub processing_ms: u64,
    pub finalizing_ms: u64,
    pub in_progress_ms: u64,
    pub validating_ms: u64,
    pub failure_rate: f64,
    /// `reject_rate` (absent before it existed: none).
    #[serde(default)]
    pub reject_rate: f64,
    pub seed: u64,
    /// The shape plain requests are answered in (absent before it existed:
    /// answered with grades).
    #[serde(default)]
    pub answers: AnswerShape,
    /// Filled once the batch has ended and its results were made.
    pub counts: Option<Counts>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Counts {
    pub succeeded: u64,
    pub errored: u64,
    pub canceled: u64,
    pub expired: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Counters {
    pub creates: u64,
    pub batches_created: u64,
    pub batches_cancelled: u64,
    pub batches_deleted: u64,
    pub injected_429: u64,
    pub injected_5xx: u64,
    pub create_commit_errors: u64,
    pub queue_full_refusals: u64,
    pub flaked_requests: u64,
    /// Direct `POST /v1/messages` answered, and their usage.
    #[serde(default)]
    pub messages: u64,
    #[serde(default)]
    pub messages_input_tokens: u64,
    #[serde(default)]
    pub messages_output_tokens: u64,
}

/// The rate limits the simulation announces on `POST /v1/messages`, per
/// minute: an account with room enough that they pace nothing in tests,
/// sent so clients follow the headers as they would Anthropic's.
pub const SIM_REQUESTS_PER_MINUTE: u64 = 20_000;
pub const SIM_TOKENS_PER_MINUTE: u64 = 4_000_000;

/// Requests and tokens of the current one-minute window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    pub start_ms: u64,
    pub requests: u64,
    pub tokens: u64,
}

impl Window {
    /// The window at `now`: a new one once a minute has passed.
    pub fn at(self, now_ms: u64) -> Window {
        if now_ms >= self.start_ms + 60_000 {
            Window {
                start_ms: now_ms,
                requests: 0,
                tokens: 0,
            }
        } else {
            self
        }
    }

    /// `anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}`
    /// (Anthropic's rate-limits page, "Response headers"): `reset` is the
    /// RFC 3339 time the bucket is full again (here: the window's end).
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let reset = rfc3339(self.start_ms + 60_000);
        vec![
            (
                "anthropic-ratelimit-requests-limit",
                SIM_REQUESTS_PER_MINUTE.to_string(),
            ),
            (
                "anthropic-ratelimit-requests-remaining",
                SIM_REQUESTS_PER_MINUTE
                    .saturating_sub(self.requests)
                    .to_string(),
            ),
            ("anthropic-ratelimit-requests-reset", reset.clone()),
            (
                "anthropic-ratelimit-tokens-limit",
                SIM_TOKENS_PER_MINUTE.to_string(),
            ),
            (
                "anthropic-ratelimit-tokens-remaining",
                SIM_TOKENS_PER_MINUTE
                    .saturating_sub(self.tokens)
                    .to_string(),
            ),
            ("anthropic-ratelimit-tokens-reset", reset),
        ]
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Db {
    seq: u64,
    batches: BTreeMap<String, SimBatch>,
    counters: Counters,
    /// Requests (by a hash of their params) that have failed once already.
    flaked: HashSet<u64>,
}

pub struct Sim {
    pub config: SimConfig,
    db: Mutex<Db>,
    /// Requests of each batch when nothing is kept on disk.
    memory: Mutex<HashMap<String, Arc<Vec<Value>>>>,
    nonce: u64,
    request_ids: AtomicU64,
    api_calls: AtomicU64,
    base: OnceLock<String>,
    window: Mutex<Window>,
}

fn guard<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// Where a batch is at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    InProgress,
    Canceling,
    Ended { at: u64 },
}

impl SimBatch {
    fn natural_end(&self) -> u64 {
        self.created_ms + self.processing_ms
    }

    pub fn end_ms(&self) -> u64 {
        match self.cancel_ms {
            Some(c) if c < self.natural_end() => c + self.finalizing_ms,
            _ => self.natural_end(),
        }
    }

    pub fn phase(&self, now: u64) -> Phase {
        if now >= self.end_ms() {
            Phase::Ended { at: self.end_ms() }
        } else if self.cancel_ms.is_some() {
            Phase::Canceling
        } else {
            Phase::InProgress
        }
    }

    /// Requests that ran before a cancel stopped the batch (all without one).
    fn executed(&self) -> u64 {
        match self.cancel_ms {
            Some(c) if c < self.natural_end() => {
                let ran = c.saturating_sub(self.created_ms + self.validating_ms);
                let span = self.in_progress_ms.max(1);
                (u128::from(self.requests) * u128::from(ran.min(span)) / u128::from(span)) as u64
            }
            _ => self.requests,
        }
    }
}

impl Sim {
    pub fn open(config: SimConfig) -> io::Result<Arc<Sim>> {
        let db = match dir(&config) {
            Some(d) => {
                std::fs::create_dir_all(&d)?;
                match std::fs::read(d.join("state.json")) {
                    Ok(bytes) => serde_json::from_slice(&bytes).map_err(io::Error::other)?,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Db::default(),
                    Err(e) => return Err(e),
                }
            }
            None => Db::default(),
        };
        let nonce = hash64(&[&now_ms().to_le_bytes(), &std::process::id().to_le_bytes()]);
        Ok(Arc::new(Sim {
            config,
            db: Mutex::new(db),
            memory: Mutex::new(HashMap::new()),
            nonce,
            request_ids: AtomicU64::new(0),
            api_calls: AtomicU64::new(0),
            base: OnceLock::new(),
            window: Mutex::new(Window::default()),
        }))
    }

    pub fn set_base(&self, base: String) {
        let _ = self.base.set(base);
    }

    pub fn next_request_id(&self) -> String {
        format!(
            "req_sim_{:x}_{}",
            self.nonce & 0xffff,
            self.request_ids.fetch_add(1, Ordering::Relaxed) + 1
        )
    }

    fn save(&self, db: &Db) -> io::Result<()> {
        let Some(d) = dir(&self.config) else {
            return Ok(());
        };
        write_atomic(&d.join("state.json"), &serde_json::to_vec(db)?)
    }

    /// The error to answer instead of serving this call, if one is due.
    pub fn injected_error(&self) -> Option<Failure> {
        let c = &self.config;
        let rates = CallRates {
            rate_limit: c.rate_limit_rate,
            server_error: c.server_error_rate,
            either: c.http_error_rate,
        };
        if !rates.any() {
            return None;
        }
        let call = self.api_calls.fetch_add(1, Ordering::Relaxed).to_le_bytes();
        let (seed, nonce) = (c.seed.to_le_bytes(), self.nonce.to_le_bytes());
        let roll = unit(hash64(&[b"http", &seed, &nonce, &call]));
        let pick = hash64(&[b"http-status", &seed, &nonce, &call]);
        let fault = call_fault(&rates, roll, pick)?;
        let mut db = guard(&self.db);
        Some(match fault {
            CallFault::RateLimit => {
                db.counters.injected_429 += 1;
                rate_limited(
                    "Number of request tokens has exceeded your per-minute rate limit (simulated)",
                )
            }
            CallFault::ServerError(StatusCode::INTERNAL_SERVER_ERROR) => {
                db.counters.injected_5xx += 1;
                Failure::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "api_error",
                    "Internal server error (simulated)",
                )
            }
            CallFault::ServerError(_) => {
                db.counters.injected_5xx += 1;
                Failure::new(
                    StatusCode::from_u16(529).expect("529 is a status"),
                    "overloaded_error",
                    "Overloaded (simulated)",
                )
            }
        })
    }

    /// Makes a batch; also says whether this create answers 500 after
    /// making it (`create_commit_error_rate`).
    pub fn create(&self, requests: &[Value]) -> Result<(SimBatch, bool), Failure> {
        let c = &self.config;
        let mut db = guard(&self.db);
        db.counters.creates += 1;
        let ordinal = db.counters.creates;
        if c.token_limit_every > 0 && ordinal.is_multiple_of(c.token_limit_every) {
            db.counters.queue_full_refusals += 1;
            let _ = self.save(&db);
            return Err(rate_limited(
                "Your organization has too many message batch requests waiting to be processed; \
                 try again once some have finished (simulated)",
            ));
        }
        db.seq += 1;
        let seq = db.seq;
        let id = format!(
            "msgbatch_sim{:016x}",
            hash64(&[b"batch", &self.nonce.to_le_bytes(), &seq.to_le_bytes()])
        );
        let mut flaked = Vec::new();
        if c.request_flake_rate > 0.0 {
            for (i, r) in requests.iter().enumerate() {
                let key = hash_json(b"flake-key", r.get("params").unwrap_or(&Value::Null));
                if !db.flaked.contains(&key)
                    && unit(hash64(&[
                        b"flake",
                        &c.seed.to_le_bytes(),
                        &key.to_le_bytes(),
                    ])) < c.request_flake_rate
                {
                    db.flaked.insert(key);
                    db.counters.flaked_requests += 1;
                    flaked.push(i as u64);
                }
            }
        }
        let expires_half =
            c.expire_every > 0 && (db.counters.batches_created + 1).is_multiple_of(c.expire_every);
        let ms = |d: Duration| d.as_millis() as u64;
        let batch = SimBatch {
            id: id.clone(),
            seq,
            created_ms: now_ms(),
            requests: requests.len() as u64,
            cancel_ms: None,
            expires_half,
            flaked,
            deleted: false,
            processing_ms: ms(c.validating + c.in_progress + c.finalizing),
            finalizing_ms: ms(c.finalizing),
            in_progress_ms: ms(c.in_progress),
            validating_ms: ms(c.validating),
            failure_rate: c.request_failure_rate,
            reject_rate: c.reject_rate,
            seed: c.seed,
            answers: c.answers.clone(),
            counts: None,
        };
        let stored = Arc::new(requests.to_vec());
        match dir(c) {
            Some(d) => {
                let bytes = serde_json::to_vec(&*stored).map_err(internal)?;
                write_atomic(&d.join(format!("{id}.requests.json")), &bytes).map_err(internal)?;
            }
            None => {
                guard(&self.memory).insert(id.clone(), stored);
            }
        }
        db.counters.batches_created += 1;
        db.batches.insert(id, batch.clone());
        let commit_fails = c.create_commit_error_rate > 0.0
            && unit(hash64(&[
                b"commit",
                &c.seed.to_le_bytes(),
                &self.nonce.to_le_bytes(),
                &seq.to_le_bytes(),
            ])) < c.create_commit_error_rate;
        if commit_fails {
            db.counters.create_commit_errors += 1;
        }
        self.save(&db).map_err(internal)?;
        Ok((batch, commit_fails))
    }

    /// One direct `POST /v1/messages`: the message its batch result would
    /// hold (the same deterministic answer to the same params), or the
    /// invalid-request error a batch line would carry.
    pub fn message(&self, params: &Value) -> Result<Value, Failure> {
        check_params(params).map_err(Failure::invalid)?;
        let n = {
            let mut db = guard(&self.db);
            db.counters.messages += 1;
            db.counters.messages
        };
        let plain = self.config.answers.plain();
        let nonce = self.nonce.to_le_bytes();
        let (v, input, output) = message(
            params,
            &format!("direct{:x}", hash64(&[&nonce])),
            n,
            &plain,
            None,
        );
        {
            let mut db = guard(&self.db);
            db.counters.messages_input_tokens += input;
            db.counters.messages_output_tokens += output;
        }
        let mut w = guard(&self.window);
        *w = w.at(now_ms());
        w.tokens += input + output;
        Ok(v)
    }

    /// One more request in the rate window; the headers to answer with.
    pub fn rate_headers(&self) -> Vec<(&'static str, String)> {
        let mut w = guard(&self.window);
        *w = w.at(now_ms());
        w.requests += 1;
        w.headers()
    }

    pub fn get(&self, id: &str) -> Option<SimBatch> {
        let b = guard(&self.db).batches.get(id).cloned()?;
        (!b.deleted).then_some(b)
    }

    pub fn all(&self) -> Vec<SimBatch> {
        guard(&self.db)
            .batches
            .values()
            .filter(|b| !b.deleted)
            .cloned()
            .collect()
    }

    pub fn cancel(&self, id: &str) -> Result<SimBatch, Failure> {
        let mut db = guard(&self.db);
        let now = now_ms();
        let b = db
            .batches
            .get_mut(id)
            .filter(|b| !b.deleted)
            .ok_or_else(|| Failure::not_found(id))?;
        if b.cancel_ms.is_none() && !matches!(b.phase(now), Phase::Ended { .. }) {
            b.cancel_ms = Some(now);
            let b = b.clone();
            db.counters.batches_cancelled += 1;
            self.save(&db).map_err(internal)?;
            return Ok(b);
        }
        Ok(b.clone())
    }

    pub fn delete(&self, id: &str) -> Result<(), Failure> {
        let mut db = guard(&self.db);
        let b = db
            .batches
            .get_mut(id)
            .filter(|b| !b.deleted)
            .ok_or_else(|| Failure::not_found(id))?;
        if !matches!(b.phase(now_ms()), Phase::Ended { .. }) {
            return Err(Failure::invalid(format!(
                "Message batch {id} has not ended yet; cancel it first (simulated)"
            )));
        }
        b.deleted = true;
        db.counters.batches_deleted += 1;
        self.save(&db).map_err(internal)
    }

    fn requests_of(&self, id: &str) -> io::Result<Arc<Vec<Value>>> {
        if let Some(r) = guard(&self.memory).get(id) {
            return Ok(r.clone());
        }
        let d = dir(&self.config).ok_or_else(|| io::Error::other("no requests kept"))?;
        let bytes = std::fs::read(d.join(format!("{id}.requests.json")))?;
        Ok(Arc::new(serde_json::from_slice(&bytes)?))
    }

    /// The JSONL results of an ended batch.
    pub fn results(&self, id: &str) -> Result<String, Failure> {
        let b = self.get(id).ok_or_else(|| Failure::not_found(id))?;
        let now = now_ms();
        if !matches!(b.phase(now), Phase::Ended { .. }) {
            return Err(Failure::invalid(format!(
                "Message batch {id} is still in progress; results are available once it has ended (simulated)"
            )));
        }
        if now > b.created_ms + RETENTION_MS {
            return Err(Failure::not_found(id));
        }
        let (mut lines, counts) = self.run(&b).map_err(internal)?;
        if self.config.malformed_results {
            lines = malformed(&lines);
        }
        let mut db = guard(&self.db);
        if let Some(stored) = db.batches.get_mut(id)
            && stored.counts.is_none()
        {
            stored.counts = Some(counts);
            let _ = self.save(&db);
        }
        Ok(lines)
    }

    /// Every request's result line, in a shuffled order (the API promises
    /// none), and the counts.
    fn run(&self, b: &SimBatch) -> io::Result<(String, Counts)> {
        let requests = self.requests_of(&b.id)?;
        let executed = b.executed();
        let flaked: HashSet<u64> = b.flaked.iter().copied().collect();
        let plain = b.answers.plain();
        let mut counts = Counts::default();
        let mut lines: Vec<String> = Vec::with_capacity(requests.len());
        // Cached system blocks seen in this batch: the first request writes
        // the cache, the later ones read it.
        let mut warm: HashSet<String> = HashSet::new();
        for (i, r) in requests.iter().enumerate() {
            let i = i as u64;
            let custom_id = r.get("custom_id").and_then(Value::as_str).unwrap_or("");
            let params = r.get("params").unwrap_or(&Value::Null);
            let result = if i >= executed {
                counts.canceled += 1;
                json!({"type": "canceled"})
            } else if b.expires_half && i >= b.requests / 2 {
                counts.expired += 1;
                json!({"type": "expired"})
            } else if let Err(m) = check_params(params) {
                counts.errored += 1;
                errored("invalid_request_error", &m, &b.id, i)
            } else if crate::simulate::faults::rejected(b.reject_rate, b.seed, &b.id, custom_id) {
                counts.errored += 1;
                let e = crate::simulate::faults::rejected_request();
                errored(&e.kind, &e.message, &b.id, i)
            } else if unit(hash64(&[
                b"fail",
                &b.seed.to_le_bytes(),
                b.id.as_bytes(),
                custom_id.as_bytes(),
            ])) < b.failure_rate
            {
                counts.errored += 1;
                errored("api_error", "Internal server error (simulated)", &b.id, i)
            } else if flaked.contains(&i) {
                counts.errored += 1;
                errored("overloaded_error", "Overloaded (simulated)", &b.id, i)
            } else {
                let (message, input, output) = message(params, &b.id, i, &plain, Some(&mut warm));
                counts.succeeded += 1;
                counts.input_tokens += input;
                counts.output_tokens += output;
                json!({"type": "succeeded", "message": message})
            };
            lines.push(json!({"custom_id": custom_id, "result": result}).to_string());
        }
        let mut rng = SplitMix64::new(hash64(&[b"order", &b.seed.to_le_bytes(), b.id.as_bytes()]));
        rng.shuffle(&mut lines);
        let mut text = lines.join("\n");
        text.push('\n');
        Ok((text, counts))
    }

    /// The counts of a batch as the API shows them: all in `processing`
    /// until it has ended.
    fn counts_now(&self, b: &SimBatch, now: u64) -> Counts {
        if !matches!(b.phase(now), Phase::Ended { .. }) {
            return Counts::default();
        }
        if let Some(c) = b.counts {
            return c;
        }
        match self.run(b) {
            Ok((_, c)) => {
                if let Some(s) = guard(&self.db).batches.get_mut(&b.id) {
                    s.counts = Some(c);
                }
                c
            }
            Err(_) => Counts::default(),
        }
    }

    /// The `MessageBatch` object.
    pub fn object(&self, b: &SimBatch) -> Value {
        let now = now_ms();
        let phase = b.phase(now);
        let c = self.counts_now(b, now);
        let ended = matches!(phase, Phase::Ended { .. });
        let base = self.base.get().cloned().unwrap_or_default();
        json!({
            "id": b.id,
            "type": "message_batch",
            "processing_status": match phase {
                Phase::InProgress => "in_progress",
                Phase::Canceling => "canceling",
                Phase::Ended { .. } => "ended",
            },
            "request_counts": {
                "processing": if ended { 0 } else { b.requests },
                "succeeded": c.succeeded,
                "errored": c.errored,
                "canceled": c.canceled,
                "expired": c.expired,
            },
            "created_at": rfc3339(b.created_ms),
            "expires_at": rfc3339(b.created_ms + 24 * 3600 * 1000),
            "ended_at": if ended { Value::String(rfc3339(b.end_ms())) } else { Value::Null },
            "cancel_initiated_at": b.cancel_ms.map(rfc3339),
            "archived_at": Value::Null,
            "results_url": if ended {
                Value::String(format!("{base}/v1/messages/batches/{}/results", b.id))
            } else {
                Value::Null
            },
        })
    }

    /// What a test needs to prove a client behaved.
    pub fn stats(&self) -> Value {
        let now = now_ms();
        let (batches, counters) = {
            let db = guard(&self.db);
            let mut v: Vec<SimBatch> = db.batches.values().cloned().collect();
            v.sort_by_key(|b| b.seq);
            (v, db.counters)
        };
        let mut total = (0u64, 0u64);
        let mut expired = 0u64;
        let list: Vec<Value> = batches
            .iter()
            .map(|b| {
                let c = self.counts_now(b, now);
                total.0 += c.input_tokens;
                total.1 += c.output_tokens;
                expired += u64::from(b.expires_half);
                let ids: Vec<Value> = self
                    .requests_of(&b.id)
                    .map(|r| {
                        r.iter()
                            .map(|x| x.get("custom_id").cloned().unwrap_or(Value::Null))
                            .collect()
                    })
                    .unwrap_or_default();
                json!({
                    "id": b.id,
                    "status": match b.phase(now) {
                        Phase::InProgress => "in_progress",
                        Phase::Canceling => "canceling",
                        Phase::Ended { .. } => "ended",
                    },
                    "deleted": b.deleted,
                    "created_at_ms": b.created_ms,
                    "ended_at_ms": match b.phase(now) { Phase::Ended { at } => Some(at), _ => None },
                    "custom_ids": ids,
                    "usage": {"input_tokens": c.input_tokens, "output_tokens": c.output_tokens},
                    "request_counts": {"succeeded": c.succeeded, "errored": c.errored, "canceled": c.canceled},
                })
            })
            .collect();
        json!({
            "api": "anthropic",
            "batches_created": counters.batches_created,
            "batches_cancelled": counters.batches_cancelled,
            "batches_deleted": counters.batches_deleted,
            "injected_429": counters.injected_429,
            "injected_5xx": counters.injected_5xx,
            "create_commit_errors": counters.create_commit_errors,
            "queue_full_refusals": counters.queue_full_refusals,
            "token_limit_failures": counters.queue_full_refusals,
            "expired_batches": expired,
            "flaked_requests": counters.flaked_requests,
            "messages": counters.messages,
            "messages_usage": {
                "input_tokens": counters.messages_input_tokens,
                "output_tokens": counters.messages_output_tokens,
            },
            "usage": {"input_tokens": total.0, "output_tokens": total.1},
            "batches": list,
        })
    }
}

/// The results stream of a broken proxy (`malformed_results`): every line
/// cut in the middle, so that none of them is JSON, while the response is
/// a 200 of the right length and type.
fn malformed(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let mut cut = line.len() / 2;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        out.push_str(&line[..cut]);
        out.push('\n');
    }
    out
}

fn dir(config: &SimConfig) -> Option<PathBuf> {
    config.data_dir.as_ref().map(|d| d.join("anthropic"))
}

fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

fn internal(e: impl std::fmt::Display) -> Failure {
    Failure::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "api_error",
        format!("simulated server fault: {e}"),
    )
}

fn rate_limited(message: &str) -> Failure {
    Failure {
        retry_after: Some(1),
        ..Failure::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", message)
    }
}

fn errored(kind: &str, message: &str, batch: &str, i: u64) -> Value {
    json!({
        "type": "errored",
        "error": {
            "type": "error",
            "error": {"type": kind, "message": message},
            "request_id": format!("req_sim_{:016x}", hash64(&[b"line", batch.as_bytes(), &i.to_le_bytes()])),
        }
    })
}

/// The checks the Messages API makes on one request's params.
fn check_params(p: &Value) -> Result<(), String> {
    let p = p.as_object().ok_or("params: must be an object")?;
    if p.get("model")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err("model: Field required".into());
    }
    match p.get("max_tokens").and_then(Value::as_u64) {
        Some(n) if n >= 1 => {}
        _ => return Err("max_tokens: Field required (an integer of at least 1)".into()),
    }
    let messages = match p.get("messages").and_then(Value::as_array) {
        Some(m) if !m.is_empty() => m,
        _ => return Err("messages: at least one message is required".into()),
    };
    // The Messages API refuses empty text (its error: "text content blocks
    // must be non-empty").
    for (i, m) in messages.iter().enumerate() {
        let empty = match m.get("content") {
            Some(Value::String(s)) => s.trim().is_empty(),
            Some(Value::Array(blocks)) => blocks.is_empty(),
            _ => true,
        };
        if empty {
            return Err(format!(
                "messages.{i}: text content blocks must be non-empty"
            ));
        }
    }
    for key in [
        "response_format",
        "logprobs",
        "n",
        "seed",
        "max_completion_tokens",
    ] {
        if p.contains_key(key) {
            return Err(format!("{key}: Extra inputs are not permitted"));
        }
    }
    if p.get("stream") == Some(&Value::Bool(true)) {
        return Err("stream: the simulation does not stream (batch requests cannot)".into());
    }
    if let Some(config) = p.get("output_config") {
        check_output_config(config)?;
    }
    Ok(())
}

/// The checks on `output_config` (structured outputs): `format`, when
/// given, is `{type: "json_schema", schema: {...}}`, and the schema uses
/// none of the constraints the API's grammar does not take (the structured
/// outputs guide's "JSON Schema limitations": numeric bounds, string
/// lengths, array sizes past `minItems` 0 or 1). Other keys (`effort`) are
/// left alone.
fn check_output_config(config: &Value) -> Result<(), String> {
    let config = config
        .as_object()
        .ok_or("output_config: Input should be a valid dictionary")?;
    let format = match config.get("format") {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Object(f)) => f,
        Some(_) => return Err("output_config.format: Input should be a valid dictionary".into()),
    };
    match format.get("type") {
        None => return Err("output_config.format.type: Field required".into()),
        Some(Value::String(t)) if t == "json_schema" => {}
        Some(_) => {
            return Err("output_config.format.type: Input should be 'json_schema'".into());
        }
    }
    let schema = match format.get("schema") {
        None | Some(Value::Null) => {
            return Err("output_config.format.schema: Field required".into());
        }
        Some(Value::Object(s)) => s,
        Some(_) => {
            return Err("output_config.format.schema: Input should be a valid dictionary".into());
        }
    };
    if let Some(extra) = format
        .keys()
        .find(|k| !matches!(k.as_str(), "type" | "schema"))
    {
        return Err(format!(
            "output_config.format.{extra}: Extra inputs are not permitted"
        ));
    }
    unsupported_in(schema, 0).map_err(|m| format!("output_config.format.schema: {m}"))
}

/// The first constraint of `schema` (or of a schema inside it) that
/// structured outputs do not support.
fn unsupported_in(schema: &serde_json::Map<String, Value>, depth: usize) -> Result<(), String> {
    if depth > 64 {
        return Err("the schema is nested too deeply".into());
    }
    let kind = match schema.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null"),
        _ => "",
    };
    let numeric = [
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
    ];
    let refused: &[&str] = match kind {
        "integer" | "number" => &numeric,
        "string" => &["minLength", "maxLength"],
        "array" => &["maxItems"],
        _ => &[],
    };
    if let Some(k) = refused.iter().find(|k| schema.contains_key(**k)) {
        return Err(format!(
            "For '{kind}' type, property '{k}' is not supported"
        ));
    }
    if kind == "array"
        && let Some(n) = schema.get("minItems")
        && !matches!(n.as_u64(), Some(0 | 1))
    {
        return Err(format!(
            "For 'array' type, 'minItems' values other than 0 or 1 are not supported (got {n})"
        ));
    }
    if schema
        .get("additionalProperties")
        .is_some_and(|a| a != &Value::Bool(false))
    {
        return Err(
            "For 'object' type, 'additionalProperties' must be explicitly set to false".into(),
        );
    }
    // The schemas inside this one.
    let mut subs: Vec<&Value> = Vec::new();
    for key in ["properties", "$defs", "definitions"] {
        if let Some(m) = schema.get(key).and_then(Value::as_object) {
            subs.extend(m.values());
        }
    }
    for key in ["anyOf", "allOf", "oneOf"] {
        if let Some(a) = schema.get(key).and_then(Value::as_array) {
            subs.extend(a);
        }
    }
    subs.extend(schema.get("items"));
    for sub in subs {
        if let Some(sub) = sub.as_object() {
            unsupported_in(sub, depth + 1)?;
        }
    }
    Ok(())
}

/// A deterministic `Message` for `params`: the OpenAI simulation's answer
/// to the same prompt (in the same shape), so both simulated APIs grade alike.
/// `warm`: the cached system blocks seen before in the batch (`None`: a
/// direct call, which the simulator does not cache).
fn message(
    params: &Value,
    batch: &str,
    i: u64,
    plain: &Plain,
    warm: Option<&mut HashSet<String>>,
) -> (Value, u64, u64) {
    let mut messages = Vec::new();
    if let Some(s) = params.get("system") {
        let text = match s {
            Value::String(s) => s.clone(),
            Value::Array(blocks) => blocks
                .iter()
                .filter_map(|b| b.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n"),
            _ => String::new(),
        };
        messages.push(json!({"role": "system", "content": text}));
    }
    messages.extend(
        params
            .get("messages")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
    );
    let mut chat = json!({
        "model": params.get("model").cloned().unwrap_or(Value::Null),
        "messages": messages,
        "max_tokens": params.get("max_tokens").cloned().unwrap_or(Value::Null),
    });
    // Structured outputs: the answer is built from the schema, as the
    // OpenAI simulation builds it for `response_format`, and decoded under
    // it (never broken, but now and then refused).
    let schema = params.pointer("/output_config/format/schema");
    let c = match schema {
        Some(schema) => {
            chat["response_format"] =
                json!({"type": "json_schema", "json_schema": {"schema": schema}});
            complete_constrained(&chat)
        }
        None => complete(&chat, plain),
    };
    let id = format!(
        "msg_sim{:016x}",
        hash64(&[b"msg", batch.as_bytes(), &i.to_le_bytes()])
    );
    // A system block marked with `cache_control` is cached whole: the first
    // request of the batch writes it, the later ones read it (Anthropic
    // reports both apart from `input_tokens`); under the simulated minimum
    // nothing is cached. The prefix as the simulator counts it.
    let marked = params
        .get("system")
        .and_then(Value::as_array)
        .is_some_and(|b| b.iter().any(|b| b.get("cache_control").is_some()));
    let (write, read) = match warm {
        Some(warm) if marked => {
            let prefix = prefix_tokens(&chat).min(c.prompt_tokens);
            let hot = !warm.insert(params["system"].to_string());
            match (cached_tokens(prefix, true) > 0, hot) {
                (false, _) => (0, 0),
                (true, false) => (prefix, 0),
                (true, true) => (0, prefix),
            }
        }
        _ => (0, 0),
    };
    let v = json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": params.get("model").cloned().unwrap_or(Value::Null),
        "content": [{"type": "text", "text": c.content}],
        "stop_reason": match c.finish_reason {
            "length" => "max_tokens",
            "refusal" => "refusal",
            _ => "end_turn",
        },
        "stop_sequence": null,
        "usage": {
            "input_tokens": c.prompt_tokens - write - read,
            "output_tokens": c.completion_tokens,
            "cache_creation_input_tokens": write,
            "cache_read_input_tokens": read,
        },
    });
    (v, c.prompt_tokens - write - read, c.completion_tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_window_counts_a_minute_then_starts_again() {
        let w = Window {
            start_ms: 1_000,
            requests: 5,
            tokens: 700,
        };
        // (now, window)
        for (now, want) in [
            (1_000, w),
            (60_999, w),
            (
                61_000,
                Window {
                    start_ms: 61_000,
                    requests: 0,
                    tokens: 0,
                },
            ),
        ] {
            assert_eq!(w.at(now), want, "{now}");
        }
        let h: HashMap<&str, String> = w.headers().into_iter().collect();
        assert_eq!(
            h["anthropic-ratelimit-requests-remaining"],
            (SIM_REQUESTS_PER_MINUTE - 5).to_string()
        );
        assert_eq!(
            h["anthropic-ratelimit-tokens-remaining"],
            (SIM_TOKENS_PER_MINUTE - 700).to_string()
        );
        assert_eq!(h["anthropic-ratelimit-requests-reset"], rfc3339(61_000));
        assert!(h["anthropic-ratelimit-tokens-reset"].ends_with('Z'));
    }

    #[test]
    fn a_direct_message_is_the_batch_results_message() {
        let sim = Sim::open(SimConfig::default()).unwrap();
        let params = json!({
            "model": "claude-haiku-4-5",
            "max_tokens": 4,
            "system": "Grade the answer from 0 to 10.",
            "messages": [{"role": "user", "content": "answer 7"}],
        });
        let direct = sim.message(&params).unwrap();
        let (batch, _, _) = message(&params, "msgbatch_x", 0, &sim.config.answers.plain(), None);
        for key in ["content", "stop_reason", "usage", "type", "role", "model"] {
            assert_eq!(direct[key], batch[key], "{key}");
        }
        assert_eq!(sim.message(&params).unwrap()["content"], direct["content"]);
        let bad = sim
            .message(&json!({"model": "m", "messages": []}))
            .unwrap_err();
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    }
}
