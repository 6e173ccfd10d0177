//! `plan`: read the inputs, render one request per row, count tokens,
//! chunk, estimate cost, and save the plan in the job's state.
//!
//! This is the I/O shell; the decisions live in pure functions
//! (`chunking::pack`, `fingerprint`, `cost::estimate`). Nothing in the job's
//! state changes until the new plan is complete: chunk files are written to
//! a scratch folder and the plan record switches in one write at the end, so
//! a bad input or an interrupted run leaves the previous plan intact.

mod idcheck;

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::chunking::{self, Item, Limits, Packer};
use crate::cost::{self, PriceTable, PricingError};
use crate::error::{Error, Result};
use crate::input::{Fields, InputError, Row, RowReader, Source, row_place};
use crate::output::{self, AddedColumns};
use crate::prompt::{Prompt, PromptError};
use crate::request::RequestBuilder;
use crate::spec::{self, CheckedSpec, Wire};
use crate::state::chunkfile::ChunkWriter;
use crate::state::{
    self, ChunkRecord, JobRecord, JobStore, Layout, PlanRecord, RequestLookup, RequestRecord,
    RequestWriter,
};
use crate::tokenize::{Counter, Encoding, encoding_for_model};
use crate::ui::Ui;

/// Bumped when the way requests are rendered or chunked changes, so an
/// older plan is never taken for a current one.
const PLAN_FORMAT: &str = "batchgrader-plan-1";

/// Rows rendered and counted together on the thread pool.
const BATCH_ROWS: usize = 2048;

/// What `plan` did.
pub struct Planned {
    pub job: String,
    pub plan: PlanRecord,
    /// False when the saved plan already matched: nothing was rewritten.
    pub changed: bool,
    pub job_dir: PathBuf,
}

/// The one builder of request bodies for `spec`: what `plan` fingerprints
/// and what the output checks each row against.
pub fn request_builder(spec: &CheckedSpec, prompt: &Prompt) -> RequestBuilder {
    RequestBuilder::new(
        spec.model(),
        prompt.system.as_deref(),
        &crate::request::body_params(spec),
    )
}

/// The fingerprint of `row`'s request as `plan` makes it; `Err` names a
/// column the template needs that the row lacks.
pub fn row_fingerprint(
    prompt: &Prompt,
    builder: &RequestBuilder,
    row: &Row,
) -> Result<String, String> {
    let user = prompt.user.render(|k| row.get(k))?;
    Ok(builder.fingerprint(&builder.body(&user)))
}

/// Hash of a request body: the identity of a request across re-plans.
pub fn fingerprint(body: &str) -> String {
    let digest = Sha256::digest(body.as_bytes());
    hex(&digest[..16])
}

use crate::hex::lower as hex;

/// Everything a plan needs that the job's state does not hold, checked
/// before the state is opened: a bad spec, prompt file, price table,
/// output path or input never creates or touches a job folder.
pub struct Prepared {
    price: Option<cost::Price>,
    prompt: Prompt,
    sources: Vec<Source>,
    /// The plan hash fed everything but the inputs' bytes.
    head: Sha256,
    limits: Limits,
    encoding: Encoding,
    /// Warnings so far (price, tokenizer, limits); they end up in the plan.
    warnings: Vec<String>,
}

/// Check what a plan of `spec` needs from outside the state: prices, prompt
/// files, the output path, the inputs (that they open), and start the plan
/// hash with everything but the inputs' bytes.
pub fn prepare(spec: &CheckedSpec, pricing: Option<&Path>) -> Result<Prepared> {
    let mut warnings = Vec::new();
    let prices = PriceTable::load(pricing)?;
    // Direct mode pays standard prices: the plan keeps the prices the job pays.
    let direct = spec.endpoint.is_direct();
    let price = prices
        .lookup(spec.model())
        .cloned()
        .map(|p| if direct { p.at_standard_prices() } else { p });
    if price.is_none() {
        if spec.run.halt.max_cost_usd.is_some() {
            return Err(PricingError::Unpriced {
                model: spec.model().to_string(),
                source_name: prices.source_name.clone(),
            }
            .into());
        }
        warnings.push(format!(
            "model `{}` has no price in {}; the plan has no cost estimate",
            spec.model(),
            prices.source_name
        ));
    }
    let (encoding, guessed) = encoding_for_model(spec.model());
    if spec.wire == Wire::AnthropicMessages {
        // Anthropic publishes no offline tokenizer (its token-counting
        // endpoint is online); o200k_base is a close stand-in for English.
        warnings.push(format!(
            "Anthropic publishes no offline tokenizer: prompt tokens are counted with \
             {encoding} and are estimates; the ledger records what the API billed"
        ));
    } else if guessed {
        warnings.push(format!(
            "no known tokenizer for model `{}`; counting with {encoding}, so token counts are estimates",
            spec.model()
        ));
    }
    let prompt = Prompt::load(spec)?;
    check_output_path(spec)?;
    let sources = spec
        .inputs
        .iter()
        .map(|p| Source::new(p, spec.input().format))
        .collect::<Result<Vec<_>, _>>()?;
    // Before the job folder is made.
    check_inputs(&spec.inputs)?;
    let head = hash_head(spec, &prompt, price.as_ref());
    let (limits, limit_warnings) = Limits::from_spec(
        provider_limits(spec),
        spec.chunking().max_requests,
        spec.max_bytes,
        spec.chunking().max_tokens,
        spec.chunking().chunks,
    );
    warnings.extend(limit_warnings);
    Ok(Prepared {
        price,
        prompt,
        sources,
        head,
        limits,
        encoding,
        warnings,
    })
}

/// Every input can be read and is a regular file. An input is read more
/// than once (planned, then read again for the output), so it must be a
/// regular file: a folder opens and fails only when read, and a pipe is
/// drained by the first reader, so a second one starts mid-stream (a byte
/// read to check it once cost a CSV its header's first letter). Each is
/// looked at before it is opened: opening a pipe waits for a writer.
pub fn check_inputs(inputs: &[std::path::PathBuf]) -> std::result::Result<(), InputError> {
    for path in inputs {
        let open = |source| InputError::Open {
            path: path.clone(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(open)?;
        if !meta.is_file() {
            return Err(InputError::BadFile {
                path: path.clone(),
                message: not_a_file(meta.is_dir()),
            });
        }
        File::open(path).map_err(open)?;
    }
    Ok(())
}

/// Why an input that is not a regular file is refused.
fn not_a_file(is_dir: bool) -> String {
    format!(
        "{} not a file: an input is read more than once (to plan, and again to write the output), \
         so it must be a regular file; save it to one first",
        if is_dir {
            "a folder,"
        } else {
            "a pipe or a device,"
        }
    )
}

/// Plan the job `spec` describes into its opened `store` (or confirm that
/// the saved plan still holds). `prepared` is `prepare(spec, ..)`.
/// Warnings go into the plan record, for the command to show.
pub fn plan(store: &JobStore, spec: &CheckedSpec, prepared: Prepared, ui: &Ui) -> Result<Planned> {
    let Prepared {
        price,
        prompt,
        sources,
        head,
        limits,
        encoding,
        warnings,
    } = prepared;
    let job = job_record(spec, store.job()?.map(|j| j.created_at));
    let previous = store.plan()?;
    if let Some(prev) = &previous {
        // Whether the saved plan still holds takes a pass over the inputs.
        // A first plan skips it: its hash is taken as the rows are read.
        let plan_hash = hash_inputs(head.clone(), &sources, ui)?;
        if prev.plan_hash == plan_hash {
            match store.check_plan_files(prev, &spec.file.display().to_string()) {
                Ok(()) => {
                    store.put_job(&job)?;
                    return Ok(Planned {
                        job: spec.name().to_string(),
                        plan: prev.clone(),
                        changed: false,
                        job_dir: store.dir().to_path_buf(),
                    });
                }
                // The same plan, but its files are damaged: make it again
                // (rows already graded keep their answers), and say why.
                Err(damage) => ui.warn(&format!("{damage}; planning again")),
            }
        }
    }
    if let Some(prev) = &previous {
        refuse_if_in_flight(store, prev)?;
    }
    // What is already graded comes from the outcome log: planned from a
    // damaged one, graded rows would be sent (and paid for) again.
    if let Some(damage) = store.outcomes_damage()? {
        return Err(damage.into());
    }
    let counter = Counter::for_input(encoding, crate::input::size_hint(&sources))?;
    let generation = previous.as_ref().map_or(1, |p| p.generation + 1);
    let marker = PlanningMarker::start(store.layout(), &sources);
    let scratch = store.layout().plan_scratch(generation);
    clean_scratch(store.layout())?;

    // The plan's hash covers the bytes the rows were read from, not a
    // pass over the files before: an input edited meanwhile cannot leave a
    // plan whose hash says it was made from the edited file.
    let digest = std::sync::Arc::new(std::sync::Mutex::new(head));
    let built = build(
        spec,
        &prompt,
        RowReader::new(sources, false).digest(digest.clone()),
        &counter,
        &limits,
        store,
        generation,
        &scratch,
        ui,
        &marker,
    );
    drop(marker);
    let mut built = match built {
        Ok(b) => b,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&scratch);
            return Err(e);
        }
    };
    built.warnings.splice(0..0, warnings);
    let plan_hash = {
        let mut d = digest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        hex(&std::mem::take(&mut *d).finalize())
    };
    let request_params = spec.request();
    let max_output = request_params
        .get("max_completion_tokens")
        .or_else(|| request_params.get("max_tokens"))
        .and_then(serde_json::Value::as_u64);
    let estimate = price.as_ref().map(|p| {
        cost::estimate(
            p,
            built.outstanding,
            built.prompt_tokens,
            spec.output().expected_output_tokens,
            max_output,
        )
    });
    if let (Some(budget), Some(e)) = (spec.run.halt.max_cost_usd, &estimate) {
        match e.high {
            Some(high) if high > budget => built.warnings.push(format!(
                "the upper cost bound {} is above halt.max_cost_usd {}; apply will refuse to start",
                cost::usd(high),
                cost::usd(budget)
            )),
            None => built.warnings.push(
                "halt.max_cost_usd is set but the request sets no max_tokens, so the cost has no upper bound"
                    .into(),
            ),
            _ => {}
        }
    }
    let plan = PlanRecord {
        generation,
        plan_hash,
        created_at: state::now_secs(),
        model: spec.model().to_string(),
        encoding,
        rows: built.rows,
        outstanding: built.outstanding,
        already_done: built.rows - built.outstanding,
        prompt_tokens: built.prompt_tokens,
        bytes: built.chunks.iter().map(|c| c.bytes).sum(),
        chunks: built.chunks,
        price,
        estimate,
        warnings: built.warnings,
    };
    let chunks_dir = store.layout().chunks_root();
    let final_dir = store.plan_dir(generation);
    // The files go in before the record that names them, so a recorded plan
    // always has its files. A plan killed between the two leaves this
    // generation's folder with no record; the next plan has the same
    // generation (the recorded one + 1), and replaces it.
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir)
            .map_err(|e| Error::io("remove the unrecorded plan folder", &final_dir, e))?;
    }
    let install = std::fs::create_dir_all(&chunks_dir)
        .and_then(|()| std::fs::rename(&scratch, &final_dir))
        .map_err(|e| Error::io("move chunk files into", &final_dir, e));
    if install.is_ok() {
        crate::interrupt::kill_point("plan-installed");
    }
    if let Err(e) = install.and_then(|()| Ok(store.commit_plan(&job, &plan)?)) {
        let _ = std::fs::remove_dir_all(&scratch);
        let _ = std::fs::remove_dir_all(&final_dir);
        return Err(e);
    }
    if let Some(prev) = previous {
        let _ = std::fs::remove_dir_all(store.layout().plan_dir(prev.generation));
    }
    Ok(Planned {
        job: spec.name().to_string(),
        plan,
        changed: true,
        job_dir: store.dir().to_path_buf(),
    })
}

/// `planning.json` while a plan reads the inputs, so `status` can say the
/// job is being planned (the plan holds the job's lock); removed when the
/// plan ends, however it ends.
struct PlanningMarker {
    layout: Layout,
    record: std::cell::RefCell<crate::status::Planning>,
    last: std::cell::Cell<std::time::Instant>,
}

impl PlanningMarker {
    fn start(layout: &Layout, sources: &[Source]) -> Self {
        let record = crate::status::Planning {
            pid: std::process::id(),
            started_at: state::now_secs(),
            read_bytes: 0,
            total_bytes: crate::input::total_bytes(sources),
        };
        // Best effort: a marker that cannot be written only costs `status`
        // its answer during the plan.
        let _ = crate::status::write_planning(layout, &record);
        PlanningMarker {
            layout: layout.clone(),
            record: record.into(),
            last: std::time::Instant::now().into(),
        }
    }

    /// Rewritten at most once a second.
    fn progress(&self, read_bytes: u64) {
        if self.last.get().elapsed() < std::time::Duration::from_secs(1) {
            return;
        }
        self.last.set(std::time::Instant::now());
        let mut r = self.record.borrow_mut();
        r.read_bytes = read_bytes;
        let _ = crate::status::write_planning(&self.layout, &r);
    }
}

impl Drop for PlanningMarker {
    fn drop(&mut self) {
        crate::status::clear_planning(&self.layout);
    }
}

/// A new plan would orphan batches of the current one that are out or
/// whose results are not merged yet.
fn refuse_if_in_flight(store: &JobStore, prev: &PlanRecord) -> Result<()> {
    let busy = store
        .units(prev.generation)?
        .into_iter()
        .filter(|u| !matches!(u.phase, state::Phase::Planned | state::Phase::Merged))
        .count();
    if busy > 0 {
        return Err(Error::usage_with_hint(
            format!(
                "the spec or inputs of job `{}` changed, but {busy} batch{} of the current plan {} still out",
                prev_name(store),
                if busy == 1 { "" } else { "es" },
                if busy == 1 { "is" } else { "are" }
            ),
            "finish them first with `batchgrader resume`, then plan again (graded rows are kept)",
        ));
    }
    Ok(())
}

fn prev_name(store: &JobStore) -> String {
    store
        .layout()
        .dir()
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}

struct Built {
    rows: u64,
    outstanding: u64,
    prompt_tokens: u64,
    chunks: Vec<ChunkRecord>,
    warnings: Vec<String>,
}

/// A batch's rendered rows, or the name of a column a row lacks.
type RenderedBatch = Vec<Result<Rendered, String>>;

struct Rendered {
    line: String,
    fingerprint: String,
    tokens: u64,
}

/// Where the request lines go while rows stream in.
enum Lines {
    /// Greedy chunking needs no totals: lines go straight into chunk files.
    Direct(Box<ChunkFiles>),
    /// A forced chunk count needs the total first: lines are spooled, then split.
    Spool { w: BufWriter<File>, path: PathBuf },
}

/// Chunk files written as requests arrive, cut by the same `Packer` rule
/// that `chunking::pack` applies.
struct ChunkFiles {
    packer: Packer,
    dir: PathBuf,
    generation: u64,
    open: Option<ChunkWriter>,
    /// Files closed so far.
    closed: u32,
    /// Closed files are flushed and synced on a thread of their own: synced
    /// in the pipeline, every full chunk stalled the reading and writing
    /// stage (and with it the counting) while the disk caught up.
    syncer: Option<Syncer>,
}

struct Syncer {
    tx: Option<std::sync::mpsc::SyncSender<(u32, chunking::Span, ChunkWriter)>>,
    done: Option<std::thread::JoinHandle<Result<Vec<ChunkRecord>>>>,
}

/// Closed files that may wait for the syncer; each holds an open file and
/// its write buffer, so planning waits beyond this (with no bound, a plan
/// of many small chunks ran out of file descriptors).
const SYNC_QUEUE: usize = 4;

impl Syncer {
    fn start(generation: u64) -> Syncer {
        let (tx, rx) =
            std::sync::mpsc::sync_channel::<(u32, chunking::Span, ChunkWriter)>(SYNC_QUEUE);
        let done = std::thread::spawn(move || {
            let mut records = Vec::new();
            for (index, span, w) in rx {
                let path = w.path().to_path_buf();
                let written = w.finish().map_err(|e| Error::io("write", &path, e))?;
                records.push(chunk_record(index, generation, span, written.sha256));
            }
            Ok(records)
        });
        Syncer {
            tx: Some(tx),
            done: Some(done),
        }
    }

    fn send(&self, index: u32, span: chunking::Span, w: ChunkWriter) -> Option<ChunkWriter> {
        let tx = self.tx.as_ref().expect("sending until finished");
        tx.send((index, span, w)).err().map(|e| e.0.2)
    }

    /// Every closed file's record, in order, once all are on disk.
    fn finish(mut self) -> Result<Vec<ChunkRecord>> {
        self.tx = None;
        self.done
            .take()
            .expect("joined once")
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    }
}

/// A plan that stops early (an error, Ctrl-C) waits for the files handed
/// over before its scratch folder is removed.
impl Drop for Syncer {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(done) = self.done.take() {
            let _ = done.join();
        }
    }
}

impl ChunkFiles {
    fn new(limits: Limits, dir: &Path, generation: u64) -> Self {
        ChunkFiles {
            packer: Packer::new(limits, 0),
            dir: dir.to_path_buf(),
            generation,
            open: None,
            closed: 0,
            syncer: None,
        }
    }

    fn push(&mut self, line: &str, item: Item) -> Result<()> {
        if let Some(span) = self.packer.push(item) {
            self.close(span)?;
        }
        if self.open.is_none() {
            let path = self.dir.join(Layout::chunk_name(self.closed + 1));
            let w = ChunkWriter::create(&path).map_err(|e| Error::io("create", &path, e))?;
            self.open = Some(w);
        }
        let w = self.open.as_mut().expect("opened above");
        w.push(line.as_bytes())
            .map_err(|e| Error::io("write", w.path(), e))
    }

    fn close(&mut self, span: chunking::Span) -> Result<()> {
        let w = self.open.take().expect("a span closes an open file");
        self.closed += 1;
        let generation = self.generation;
        let syncer = self.syncer.get_or_insert_with(|| Syncer::start(generation));
        let Some(w) = syncer.send(self.closed, span, w) else {
            return Ok(());
        };
        // The syncer stopped at an error: that is the plan's error.
        let stopped = self.syncer.take().expect("set above").finish();
        Err(stopped.err().unwrap_or_else(|| {
            Error::io(
                "write",
                w.path(),
                std::io::Error::other("the thread that syncs chunk files stopped"),
            )
        }))
    }

    fn finish(mut self) -> Result<Vec<ChunkRecord>> {
        if let Some(span) = self.packer.finish() {
            self.close(span)?;
        }
        self.syncer.take().map_or(Ok(Vec::new()), Syncer::finish)
    }
}

fn chunk_record(index: u32, generation: u64, span: chunking::Span, sha256: String) -> ChunkRecord {
    ChunkRecord {
        index,
        file: Layout::chunk_rel(generation, index),
        requests: span.requests() as u64,
        bytes: span.bytes,
        tokens: span.tokens,
        sha256,
        first_seq: span.start as u64,
    }
}

#[allow(clippy::too_many_arguments)]
fn build(
    spec: &CheckedSpec,
    prompt: &Prompt,
    mut reader: RowReader,
    counter: &Counter,
    limits: &Limits,
    store: &JobStore,
    generation: u64,
    scratch: &Path,
    ui: &Ui,
    marker: &PlanningMarker,
) -> Result<Built> {
    std::fs::create_dir_all(scratch).map_err(|e| Error::io("create", scratch, e))?;
    let lines = match limits.forced_chunks {
        None => Lines::Direct(Box::new(ChunkFiles::new(*limits, scratch, generation))),
        Some(_) => {
            let path = scratch.join("spool.jsonl");
            let f = File::create(&path).map_err(|e| Error::io("create", &path, e))?;
            Lines::Spool {
                w: BufWriter::with_capacity(1 << 20, f),
                path,
            }
        }
    };
    let records = RequestWriter::create(scratch)
        .map_err(|e| Error::io("create request records in", scratch, e))?;
    let builder = request_builder(spec, prompt);
    let fixed_tokens = counter.fixed_chat_tokens(prompt.system.as_deref()) as u64;
    let id_column = spec.input().id.as_deref();

    let sources = reader.sources().to_vec();
    let sources = &sources[..];
    let bar = ui.progress(reader.total_bytes(), "reading");
    let mut sink = Sink {
        spec,
        sources,
        limits,
        ids: id_column.map(|_| idcheck::IdCheck::new(sources, scratch)),
        id_column,
        store,
        lines,
        records,
        scratch,
        items: Vec::new(),
        outstanding: 0,
        rows: 0,
        prompt_tokens: 0,
    };
    // Whether each file's columns were checked (on its first row).
    let mut checked_files = vec![false; sources.len()];
    let render = |batch: &[Row]| -> RenderedBatch {
        batch
            .par_iter()
            .map(|row| {
                if crate::interrupt::requested() {
                    // Ctrl-C: skip the rest of the batch; checked below.
                    return Err(String::new());
                }
                let user = prompt.user.render(|k| row.get(k))?;
                let (line, body) = builder.line(&state::custom_id(row.number), &user);
                let fingerprint = builder.fingerprint(&line[body]);
                let tokens = fixed_tokens + counter.count(&user) as u64;
                Ok(Rendered {
                    line,
                    fingerprint,
                    tokens,
                })
            })
            .collect()
    };
    // A three-stage pipeline over batches of rows: while the pool renders
    // and counts batch i, one task takes the results of batch i-1 (ids,
    // records, chunk files) and reads batch i+1. On two cores the reading
    // and writing would otherwise leave one core idle between batches.
    let added = AddedColumns::for_spec(spec);
    let added = (added.clone(), added.names());
    let (mut current, mut read_error) = read_batch(
        &mut reader,
        spec,
        prompt,
        sources,
        &mut checked_files,
        &added,
    );
    let mut pending: Option<(Vec<Row>, RenderedBatch)> = None;
    while !current.is_empty() || pending.is_some() {
        let (next, rendered) = rayon::join(
            || -> Result<(Vec<Row>, Option<Error>)> {
                if let Some((rows, rendered)) = pending.take() {
                    sink.take(&rows, rendered)?;
                    bar.set_position(reader.bytes_read());
                }
                // A read error comes after the rows read before it.
                if read_error.is_some() {
                    return Ok((Vec::new(), read_error.take()));
                }
                Ok(read_batch(
                    &mut reader,
                    spec,
                    prompt,
                    sources,
                    &mut checked_files,
                    &added,
                ))
            },
            || render(&current),
        );
        // Ctrl-C: rows rendered after it are errors that must not be taken
        // for the input's; the flag stays set, so no later batch is taken.
        if crate::interrupt::requested() {
            return Err(Error::Interrupted { what: "planning" });
        }
        marker.progress(reader.bytes_read());
        let (next, error) = next?;
        if !current.is_empty() {
            pending = Some((std::mem::take(&mut current), rendered));
        } else if let Some(e) = read_error.take() {
            return Err(e);
        }
        current = next;
        if error.is_some() {
            read_error = error;
        }
    }
    if let Some(e) = read_error {
        return Err(e);
    }
    let Sink {
        items,
        outstanding,
        rows,
        prompt_tokens,
        ids,
        lines,
        records,
        ..
    } = sink;
    bar.finish_and_clear();
    if rows == 0 {
        let names: Vec<String> = sources
            .iter()
            .map(|s| s.path.display().to_string())
            .collect();
        return Err(InputError::BadFile {
            path: PathBuf::from(names.join(", ")),
            message: "the input has no rows to grade".into(),
        }
        .into());
    }
    records
        .finish()
        .map_err(|e| Error::io("write request records in", scratch, e))?;
    if let Some(ids) = ids {
        let lookup = RequestLookup::open(scratch)
            .map_err(|e| Error::io("read request records in", scratch, e))?;
        ids.finish(|row| {
            lookup
                .get(row)
                .map_err(|e| Error::io("read request records in", scratch, e))?
                .map(|r| r.key)
                .ok_or_else(|| Error::io("read request records in", scratch, missing_record(row)))
        })?;
    }
    let mut warnings = Vec::new();
    let chunks = match lines {
        Lines::Direct(c) => c.finish()?,
        Lines::Spool { w, path } => {
            w.into_inner()
                .map_err(|e| Error::io("write", &path, e.into_error()))?;
            let packing = chunking::pack(&items, limits)?;
            warnings.extend(packing.warning);
            let chunks = write_chunks(&path, scratch, &packing.spans, generation)?;
            std::fs::remove_file(&path).map_err(|e| Error::io("remove", &path, e))?;
            chunks
        }
    };
    Ok(Built {
        rows,
        outstanding,
        prompt_tokens,
        chunks,
        warnings,
    })
}

fn missing_record(row: u64) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        format!("no record for row {row}"),
    )
}

/// Up to BATCH_ROWS rows, and the read error that ended them early, if any.
fn read_batch(
    reader: &mut RowReader,
    spec: &CheckedSpec,
    prompt: &Prompt,
    sources: &[Source],
    checked_files: &mut [bool],
    added: &(AddedColumns, Vec<String>),
) -> (Vec<Row>, Option<Error>) {
    let mut batch = Vec::with_capacity(BATCH_ROWS);
    for row in reader.by_ref().take(BATCH_ROWS) {
        let row = match row {
            Ok(row) => row,
            Err(e) => return (batch, Some(e.into())),
        };
        let first_of_file = checked_files
            .get_mut(row.file)
            .is_some_and(|seen| !std::mem::replace(seen, true));
        let checked = if first_of_file {
            check_columns(spec, prompt, sources, &row).and_then(|()| {
                output::check_collisions(&spec.file, &added.0, &added.1, sources, &row)
            })
        } else if matches!(row.fields, Fields::Object(_)) {
            // Objects need not share their keys: each row is checked.
            output::check_collisions(&spec.file, &added.0, &added.1, sources, &row)
        } else {
            Ok(())
        };
        if let Err(e) = checked {
            return (batch, Some(e));
        }
        batch.push(row);
    }
    (batch, None)
}

/// Takes rendered rows in input order: checks their ids, writes their
/// request lines and records, and adds up the plan's totals.
struct Sink<'a> {
    spec: &'a CheckedSpec,
    sources: &'a [Source],
    limits: &'a Limits,
    ids: Option<idcheck::IdCheck<'a>>,
    id_column: Option<&'a str>,
    /// Where the outcomes of earlier plans are (a request that already
    /// succeeded is not sent again).
    store: &'a JobStore,
    lines: Lines,
    records: RequestWriter,
    scratch: &'a Path,
    /// Every outstanding request's size, kept only for a forced chunk count.
    items: Vec<Item>,
    outstanding: u64,
    rows: u64,
    prompt_tokens: u64,
}

impl Sink<'_> {
    fn take(&mut self, batch: &[Row], rendered: RenderedBatch) -> Result<()> {
        let (spec, sources, limits) = (self.spec, self.sources, self.limits);
        for (row, r) in batch.iter().zip(rendered) {
            let r = r.map_err(|name| missing_column(spec, sources, row, &name))?;
            let key = match (&mut self.ids, self.id_column) {
                (Some(ids), Some(col)) => {
                    let key = row.get(col).unwrap_or_default();
                    ids.add(key, row)?;
                    key.to_string()
                }
                _ => row.number.to_string(),
            };
            self.rows += 1;
            let seq = if self.store.succeeded(fingerprint_bits(&r.fingerprint))? {
                None
            } else {
                let item = Item {
                    tokens: r.tokens,
                    bytes: r.line.len() as u64 + 1,
                };
                chunking::check_item(&item, 0, limits).map_err(|e| name_row(e, sources, row))?;
                match &mut self.lines {
                    Lines::Direct(c) => c.push(&r.line, item)?,
                    Lines::Spool { w, path } => w
                        .write_all(r.line.as_bytes())
                        .and_then(|()| w.write_all(b"\n"))
                        .map_err(|e| Error::io("write", path.as_path(), e))?,
                }
                if limits.forced_chunks.is_some() {
                    self.items.push(item);
                }
                self.prompt_tokens += r.tokens;
                self.outstanding += 1;
                Some(self.outstanding - 1)
            };
            self.records
                .push(&RequestRecord {
                    row: row.number,
                    key,
                    fingerprint: r.fingerprint,
                    tokens: r.tokens,
                    seq,
                })
                .map_err(|e| Error::io("write request records in", self.scratch, e))?;
        }
        Ok(())
    }
}

/// The first 128 bits of a fingerprint, for compact sets.
pub fn fingerprint_bits(fp: &str) -> u128 {
    u128::from_str_radix(fp.get(..32).unwrap_or(fp), 16).unwrap_or(0)
}

fn name_row(e: chunking::ChunkError, sources: &[Source], row: &Row) -> Error {
    match e {
        chunking::ChunkError::TooLarge {
            unit, value, limit, ..
        } => chunking::ChunkError::RowTooLarge {
            place: format!("{} (row {})", row_place(sources, row), row.number),
            unit,
            value,
            limit,
        }
        .into(),
        other => other.into(),
    }
}

/// Copy the spooled request lines into one file per chunk.
fn write_chunks(
    spool_path: &Path,
    dir: &Path,
    spans: &[chunking::Span],
    generation: u64,
) -> Result<Vec<ChunkRecord>> {
    let mut lines = BufReader::with_capacity(
        1 << 20,
        File::open(spool_path).map_err(|e| Error::io("read", spool_path, e))?,
    );
    let mut out = Vec::with_capacity(spans.len());
    let mut line = Vec::new();
    for (i, span) in spans.iter().enumerate() {
        if crate::interrupt::requested() {
            return Err(Error::Interrupted { what: "planning" });
        }
        let index = i as u32 + 1;
        let path = dir.join(Layout::chunk_name(index));
        let io = |e| Error::io("write", &path, e);
        let mut w = ChunkWriter::create(&path).map_err(io)?;
        for _ in span.start..span.end {
            line.clear();
            lines
                .read_until(b'\n', &mut line)
                .map_err(|e| Error::io("read", spool_path, e))?;
            w.push_raw(&line).map_err(io)?;
        }
        let written = w.finish().map_err(io)?;
        out.push(chunk_record(index, generation, *span, written.sha256));
    }
    Ok(out)
}

/// The template's placeholders and the id column must exist in every file.
fn check_columns(spec: &CheckedSpec, prompt: &Prompt, sources: &[Source], row: &Row) -> Result<()> {
    for name in prompt.user.placeholders() {
        if row.get(name).is_none() {
            return Err(missing_column(spec, sources, row, name));
        }
    }
    if let Some(id) = spec.input().id.as_deref()
        && row.get(id).is_none()
    {
        return Err(Error::usage_with_hint(
            format!(
                "{}: input.id: column `{id}` is not in {}; the columns are: {}",
                spec.file.display(),
                row_place(sources, row),
                row.column_names().join(", ")
            ),
            "set `input.id` to a column of the input, or remove it to key rows by number",
        ));
    }
    Ok(())
}

fn missing_column(spec: &CheckedSpec, sources: &[Source], row: &Row, name: &str) -> Error {
    PromptError::MissingColumn {
        spec: spec.file.clone(),
        name: name.to_string(),
        place: row_place(sources, row),
        columns: row.column_names().iter().map(|s| s.to_string()).collect(),
    }
    .into()
}

/// Hash of everything that decides the requests and their chunks.
/// The plan hash fed everything that decides the requests except the
/// inputs' bytes (`hash_inputs`, or the reader's digest, adds those).
fn hash_head(spec: &CheckedSpec, prompt: &Prompt, price: Option<&cost::Price>) -> Sha256 {
    #[derive(Serialize)]
    struct Inputs<'a> {
        format: &'static str,
        model: &'a str,
        system: Option<&'a str>,
        user: &'a str,
        request: &'a serde_json::Map<String, serde_json::Value>,
        input: &'a spec::Input,
        chunking: &'a spec::Chunking,
        expected_output_tokens: Option<u64>,
        price: Option<&'a cost::Price>,
        // Absent without a schema, so plans made before schemas keep their hash.
        #[serde(skip_serializing_if = "Option::is_none")]
        schema: Option<&'a serde_json::Value>,
    }
    let head = Inputs {
        format: PLAN_FORMAT,
        model: spec.model(),
        system: prompt.system.as_deref(),
        user: &prompt.user_text,
        request: spec.request(),
        input: spec.input(),
        chunking: spec.chunking(),
        expected_output_tokens: spec.output().expected_output_tokens,
        price,
        schema: spec.schema.as_ref(),
    };
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(&head).expect("plain data serializes"));
    h
}

/// The plan hash of the inputs as they are now: `head` and every input's
/// bytes, fed as `RowReader::digest` feeds them.
fn hash_inputs(mut h: Sha256, sources: &[Source], ui: &Ui) -> Result<String> {
    // A multi-GB input takes seconds, which the meter shows.
    let meter = ui.progress(crate::input::total_bytes(sources), "hashing the input");
    let mut hashed = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    for src in sources {
        let mut f = File::open(&src.path).map_err(|source| InputError::Open {
            path: src.path.clone(),
            source,
        })?;
        h.update(crate::input::FILE_SEPARATOR);
        // In pieces, so Ctrl-C is heard while a large input is hashed.
        loop {
            if crate::interrupt::requested() {
                return Err(Error::Interrupted { what: "planning" });
            }
            let n = f.read(&mut buf).map_err(|source| InputError::Open {
                path: src.path.clone(),
                source,
            })?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            hashed += n as u64;
            meter.set_position(hashed);
        }
    }
    meter.finish_and_clear();
    Ok(hex(&h.finalize()))
}

/// The output is written at the end of `apply`; find out now, before any
/// money is spent, whether it can be.
fn check_output_path(spec: &CheckedSpec) -> Result<()> {
    let out = &spec.output_path;
    let fail = |why: String| {
        Error::usage_with_hint(
            format!(
                "{}: output.path: {} {why}",
                spec.file.display(),
                out.display()
            ),
            "choose an output path in a folder you can write to",
        )
    };
    if out.is_dir() {
        return Err(fail("is a folder".into()));
    }
    if spec.output().format.is_none() && spec::Format::from_path(out).is_none() {
        return Err(fail(
            "has no .csv, .json or .jsonl extension; set output.format".into(),
        ));
    }
    // The nearest folder that exists must accept a new file.
    let mut dir = out.parent().unwrap_or(Path::new("."));
    while !dir.as_os_str().is_empty() && !dir.exists() {
        dir = dir.parent().unwrap_or(Path::new(""));
    }
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    if !dir.is_dir() {
        return Err(fail(format!(
            "cannot be created: {} is not a folder",
            dir.display()
        )));
    }
    let probe = dir.join(format!(".batchgrader-write-test-{}", std::process::id()));
    match File::create(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(fail(format!("cannot be written: {e}"))),
    }
}

fn job_record(spec: &CheckedSpec, created_at: Option<u64>) -> JobRecord {
    let now = state::now_secs();
    JobRecord {
        name: spec.name().to_string(),
        spec_file: std::path::absolute(&spec.file)
            .unwrap_or_else(|_| spec.file.clone())
            .display()
            .to_string(),
        spec: spec.saved(),
        created_at: created_at.unwrap_or(now),
        updated_at: now,
    }
}

/// What one batch may hold at the spec's provider: the backend's own
/// ceilings, so that a chunk never outgrows the batch it becomes.
fn provider_limits(spec: &CheckedSpec) -> crate::provider::BatchLimits {
    match spec.wire {
        Wire::AnthropicMessages => crate::provider::anthropic::LIMITS,
        Wire::OpenAiChat => crate::provider::openai::LIMITS,
    }
}

/// Remove scratch folders an interrupted plan left behind.
fn clean_scratch(layout: &Layout) -> Result<()> {
    let dir = layout.dir();
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io("read", dir, e))?;
    for entry in entries.flatten() {
        if Layout::is_plan_scratch(&entry.file_name().to_string_lossy()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_stable_and_short() {
        let a = fingerprint("{\"model\":\"m\"}");
        assert_eq!(a.len(), 32);
        assert_eq!(a, fingerprint("{\"model\":\"m\"}"));
        assert_ne!(a, fingerprint("{\"model\":\"n\"}"));
    }
}
