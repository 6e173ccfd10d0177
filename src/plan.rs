//! `plan`: read the inputs, render one request per row, count tokens,
//! chunk, estimate cost, and save the plan in the job's state.
//!
//! This is the I/O shell; the decisions live in pure functions
//! (`chunking::pack`, `fingerprint`, `cost::estimate`). Nothing in the job's
//! state changes until the new plan is complete: chunk files are written to
//! a scratch folder and the plan record switches in one write at the end, so
//! a bad input or an interrupted run leaves the previous plan intact.

mod idcheck;
mod pipeline;
use pipeline::build;

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
    warnings.extend(prices.warnings.iter().cloned());
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
        .map(|p| Source::of_input(p, spec.input()))
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
        // A plan whose requests were partly answered by a rehearsal is made
        // again, so that its batches leave those rows out.
        if prev.plan_hash == plan_hash && !store.plan_is_stale(prev.generation)? {
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
    // Scratch folders of plans that died went when the store was opened.
    let scratch = store.layout().plan_scratch(generation);

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
        let mut e = cost::estimate(
            p,
            built.outstanding,
            built.prompt_tokens,
            spec.output().expected_output_tokens,
            max_output,
        );
        // Cached in 128-token blocks on OpenAI (prompt caching guide), a
        // marked block whole on Anthropic, which bills the write apart.
        let (block, writes) = match spec.wire {
            Wire::OpenAiChat => (128, false),
            Wire::AnthropicMessages => (1, true),
        };
        e.cached = built.cached_prefix.map(|prefix| {
            cost::with_cache_hits(
                p,
                built.outstanding,
                built.chunks.len() as u64,
                built.prompt_tokens,
                prefix,
                block,
                writes,
            )
        });
        e
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
        gold_rows: built.gold_rows,
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
        // A unit `uploaded` holds a staged file and no batch (never
        // created, found not made, or requeued): nothing is out.
        .filter(|u| {
            !matches!(
                u.phase,
                state::Phase::Planned | state::Phase::Uploaded | state::Phase::Merged
            )
        })
        .count();
    if busy > 0 {
        return Err(Error::usage_with_hint(
            format!(
                "the spec or inputs of job `{}` changed, but {busy} batch{} of the current plan {} still out",
                prev_name(store),
                if busy == 1 { "" } else { "es" },
                if busy == 1 { "is" } else { "are" }
            ),
            format!(
                "finish them first with `batchgrader resume {}`, then plan again (graded rows are kept)",
                prev_name(store)
            ),
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

/// The first 128 bits of a fingerprint, for compact sets.
pub fn fingerprint_bits(fp: &str) -> u128 {
    u128::from_str_radix(fp.get(..32).unwrap_or(fp), 16).unwrap_or(0)
}

/// The template's placeholders and the id column must exist in every file.
fn check_columns(spec: &CheckedSpec, prompt: &Prompt, sources: &[Source], row: &Row) -> Result<()> {
    columns_present(spec, &prompt.user.placeholders(), sources, row)
        .map_err(|e| with_separator_hint(e, row))
}

/// `validate`'s look at the inputs that exist: each file's first row (the
/// header of a CSV file) against the placeholders and `input.id`, with the
/// messages `plan` gives. A file that cannot be read is left to `plan`,
/// which says why row by row.
pub fn check_headers(spec: &CheckedSpec) -> Result<()> {
    let Ok(template) = crate::template::Template::parse(&spec.prompt().user) else {
        return Ok(());
    };
    for path in spec.inputs.iter().filter(|p| p.is_file()) {
        let Ok(source) = Source::of_input(path, spec.input()) else {
            continue;
        };
        let sources = vec![source];
        if let Some(Ok(row)) = RowReader::new(sources.clone(), false).next() {
            columns_present(spec, &template.placeholders(), &sources, &row)
                .map_err(|e| with_separator_hint(e, &row))?;
        }
    }
    Ok(())
}

/// A CSV header that is one cell holding `;` or a tab is a file separated
/// by something else than commas: say so, since the columns the error
/// lists then make no sense.
fn with_separator_hint(e: Error, row: &Row) -> Error {
    let names = row.column_names();
    let sep = match names.as_slice() {
        [one] if one.contains(';') => Some("`;`"),
        [one] if one.contains('\t') => Some("tabs"),
        _ => None,
    };
    match (sep, &row.fields) {
        (Some(sep), crate::input::Fields::Csv { .. }) => Error::usage_with_hint(
            e.to_string(),
            format!(
                "the header is one column holding {sep}: the file seems separated by {sep}, not commas; set `input.delimiter: {}` in the spec",
                if sep == "tabs" { "\"\\t\"" } else { "\";\"" }
            ),
        ),
        _ => e,
    }
}

fn columns_present(
    spec: &CheckedSpec,
    placeholders: &[&str],
    sources: &[Source],
    row: &Row,
) -> Result<()> {
    for name in placeholders {
        if row.get(name).is_none() {
            return Err(missing_column(spec, sources, row, name));
        }
    }
    if let Some(g) = spec.gold.iter().find(|g| row.get(&g.column).is_none()) {
        return Err(Error::usage_with_hint(
            format!(
                "{}: output.gold: column `{}` is not in {}; the columns are: {}",
                spec.file.display(),
                g.column,
                row_place(sources, row),
                row.column_names().join(", ")
            ),
            "name the input column that holds the expected values, or remove `output.gold`",
        ));
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
        // Absent under `auto`, so plans made before caching keep their hash.
        #[serde(skip_serializing_if = "spec::CacheSetting::is_auto")]
        cache: spec::CacheSetting,
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
        cache: spec.prompt().cache,
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
