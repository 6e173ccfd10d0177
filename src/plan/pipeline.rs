//! The plan's three-stage pipeline over batches of rows: while rayon's pool
//! renders and counts batch i, one task takes batch i-1 (the id check,
//! request records, chunk files) and reads batch i+1.

use super::*;

/// What the pipeline made of the rows.
pub(super) struct Built {
    pub rows: u64,
    pub outstanding: u64,
    pub prompt_tokens: u64,
    pub chunks: Vec<ChunkRecord>,
    pub warnings: Vec<String>,
    /// Rows with at least one gold value.
    pub gold_rows: u64,
    /// The shared prefix's tokens (the system message), when the requests
    /// ask for prompt caching.
    pub cached_prefix: Option<u64>,
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
pub(super) fn build(
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
            let f = crate::nofollow::create(&path).map_err(|e| Error::io("create", &path, e))?;
            Lines::Spool {
                w: BufWriter::with_capacity(1 << 20, f),
                path,
            }
        }
    };
    let records = RequestWriter::create(scratch)
        .map_err(|e| Error::io("create request records in", scratch, e))?;
    let gold = if spec.gold.is_empty() {
        None
    } else {
        Some(
            state::gold::Writer::create(scratch)
                .map_err(|e| Error::io("create gold values in", scratch, e))?,
        )
    };
    let fixed_tokens = counter.fixed_chat_tokens(prompt.system.as_deref()) as u64;
    // The shared prefix's tokens: the system message (rubric and examples).
    let prefix_tokens = fixed_tokens - counter.fixed_chat_tokens(None) as u64;
    let tail = crate::request::cache_tail(spec, prompt.system.as_deref(), prefix_tokens);
    let cached_prefix = (!tail.is_empty()).then_some(prefix_tokens);
    let builder = request_builder(spec, prompt).with_cache(tail);
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
        gold,
        gold_rows: 0,
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
        gold,
        gold_rows,
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
    if let Some(gold) = gold {
        gold.finish()
            .map_err(|e| Error::io("write gold values in", scratch, e))?;
    }
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
        gold_rows,
        cached_prefix,
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
    /// The rows' gold values, when the spec names gold columns.
    gold: Option<state::gold::Writer>,
    gold_rows: u64,
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
            if let Some(gold) = &mut self.gold {
                let cells = crate::agreement::gold_cells(&spec.gold, row);
                self.gold_rows += u64::from(cells.iter().any(Option::is_some));
                gold.push(row.number, cells)
                    .map_err(|e| Error::io("write gold values in", self.scratch, e))?;
            }
        }
        Ok(())
    }
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
