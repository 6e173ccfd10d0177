//! Streaming readers for the inputs: CSV with a header row, a JSON array of
//! objects, or JSONL. Rows come out one at a time, so memory stays flat
//! however large the file is.
//!
//! Cells are the exact strings in the file: no type guessing (`007` stays
//! `007`), an empty cell stays empty, JSON numbers keep their text, and
//! nested JSON values render as compact JSON. A JSON `null` is an empty cell.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::csvquote::{self, QuoteCheck};
use crate::spec::Format;

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("cannot read input {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot tell the format of input {}: the name does not end in .csv, .json or .jsonl", path.display())]
    UnknownFormat { path: PathBuf },
    #[error("{}:{line}: {message}", path.display())]
    Bad {
        path: PathBuf,
        /// Line, or element number for JSON arrays (then `line` is 0 and the message says which).
        line: u64,
        message: String,
    },
    #[error("{}: {message}", path.display())]
    BadFile { path: PathBuf, message: String },
}

impl InputError {
    pub fn hint(&self) -> Option<String> {
        match self {
            InputError::UnknownFormat { .. } => {
                Some("set `input.format: csv|json|jsonl` in the spec".into())
            }
            InputError::Open { .. } => Some("paths in a spec are relative to the spec file".into()),
            _ => None,
        }
    }
}

/// One input file and how to read it.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: PathBuf,
    pub format: Format,
    /// A CSV file's field separator (`input.delimiter`; `,` by default).
    pub delimiter: u8,
}

impl Source {
    pub fn new(path: &Path, forced: Option<Format>) -> Result<Source, InputError> {
        let format = forced.or_else(|| Format::from_path(path)).ok_or_else(|| {
            InputError::UnknownFormat {
                path: path.to_path_buf(),
            }
        })?;
        Ok(Source {
            path: path.to_path_buf(),
            format,
            delimiter: b',',
        })
    }

    /// An input file of a spec: its `input.format` and `input.delimiter`.
    pub fn of_input(path: &Path, input: &crate::spec::Input) -> Result<Source, InputError> {
        Ok(Source {
            delimiter: input.delimiter_byte(),
            ..Source::new(path, input.format)?
        })
    }
}

/// Column names of a CSV file, with a name → index map.
#[derive(Debug)]
pub struct Header {
    pub names: Vec<String>,
    index: HashMap<String, usize>,
    /// The header's bytes as in the file, when the reader keeps raw text.
    pub raw: Option<String>,
}

impl Header {
    fn new(names: Vec<String>) -> Self {
        let mut index = HashMap::with_capacity(names.len());
        for (i, n) in names.iter().enumerate() {
            index.entry(n.clone()).or_insert(i);
        }
        Header {
            names,
            index,
            raw: None,
        }
    }
}

/// The cells of one row.
#[derive(Debug)]
pub enum Fields {
    Csv {
        header: Arc<Header>,
        record: csv::StringRecord,
    },
    Object(Vec<(String, String)>),
}

/// One input row.
#[derive(Debug)]
pub struct Row {
    /// 1-based number across all input files, in reading order.
    pub number: u64,
    /// Index of the source file.
    pub file: usize,
    /// Where the row starts: a 1-based line (CSV, JSONL) or element number (JSON).
    pub line: u64,
    pub fields: Fields,
    /// The row's text as in the file, when the reader was asked to keep it.
    pub raw: Option<String>,
}

impl Row {
    /// The cell under `name`, if the row has that column.
    pub fn get(&self, name: &str) -> Option<&str> {
        match &self.fields {
            Fields::Csv { header, record } => header.index.get(name).and_then(|&i| record.get(i)),
            Fields::Object(pairs) => pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str()),
        }
    }

    pub fn column_names(&self) -> Vec<&str> {
        match &self.fields {
            Fields::Csv { header, .. } => header.names.iter().map(String::as_str).collect(),
            Fields::Object(pairs) => pairs.iter().map(|(k, _)| k.as_str()).collect(),
        }
    }

    /// Every (column, cell) pair in file order.
    pub fn cells(&self) -> Vec<(&str, &str)> {
        match &self.fields {
            Fields::Csv { header, record } => header
                .names
                .iter()
                .map(String::as_str)
                .zip(record.iter())
                .collect(),
            Fields::Object(pairs) => pairs
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
        }
    }
}

/// Where a row is, for messages: `data/essays.csv:17` or `data/x.json element 4`.
pub fn row_place(sources: &[Source], row: &Row) -> String {
    place(sources, row.file, row.line)
}

/// Same as `row_place`, from a file index and line.
pub fn place(sources: &[Source], file: usize, line: u64) -> String {
    let src = &sources[file];
    match src.format {
        Format::Json => format!("{} element {line}", src.path.display()),
        _ => format!("{}:{line}", src.path.display()),
    }
}

/// How many bytes the sources will give, for sizing work up front: their
/// total size, or `u64::MAX` when one is not a regular file (a pipe's size
/// says nothing of what it holds) or cannot be looked at.
pub fn size_hint(sources: &[Source]) -> u64 {
    sources
        .iter()
        .map(|s| match std::fs::metadata(&s.path) {
            Ok(m) if m.is_file() => m.len(),
            _ => u64::MAX,
        })
        .fold(0, u64::saturating_add)
}

/// Total size of the sources in bytes, for progress bars.
pub fn total_bytes(sources: &[Source]) -> u64 {
    sources
        .iter()
        .filter_map(|s| std::fs::metadata(&s.path).ok())
        .map(|m| m.len())
        .sum()
}

/// Counts bytes read, for progress reporting; for a CSV file, also follows
/// its quoting as the bytes go by (`csvquote`).
struct Counting<R> {
    inner: R,
    count: Arc<AtomicU64>,
    quotes: Option<QuoteCheck>,
    digest: Option<Digest>,
}

/// A SHA-256 fed every byte the reader reads, file after file (see
/// `RowReader::digest`).
pub type Digest = Arc<std::sync::Mutex<sha2::Sha256>>;

/// Put between files in an input digest, so that moving bytes from the end
/// of one file to the start of the next changes it.
pub const FILE_SEPARATOR: &[u8] = b"\0file\0";

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(q) = &mut self.quotes {
            q.feed(&buf[..n]);
        }
        if let Some(d) = &self.digest {
            sha2::Digest::update(&mut *lock(d), &buf[..n]);
        }
        Ok(n)
    }
}

type JsonMsg = Result<(u64, Vec<(String, String)>, Option<String>), InputError>;

enum FileReader {
    Csv {
        rdr: csv::Reader<Counting<File>>,
        header: Arc<Header>,
        /// Sizes of the last record, to allocate the next one in one go.
        hint: (usize, usize),
        // A second handle that follows the parser to copy each record's bytes.
        raw: Option<(BufReader<File>, u64)>,
        /// 1 when the file's lines end in `\r\n`: the parser then places a
        /// record on the line before it (at the `\n` it has not consumed).
        line_shift: u64,
        /// The file's size when opened: a record that ends there is the last.
        len: u64,
    },
    Jsonl {
        rdr: BufReader<Counting<File>>,
        line: u64,
        buf: Vec<u8>,
    },
    JsonArray {
        rx: mpsc::Receiver<JsonMsg>,
    },
}

/// Reads every row of every source in order.
pub struct RowReader {
    sources: Vec<Source>,
    next_file: usize,
    current: Option<FileReader>,
    number: u64,
    keep_raw: bool,
    bytes: Arc<AtomicU64>,
    digest: Option<Digest>,
}

impl RowReader {
    pub fn new(sources: Vec<Source>, keep_raw: bool) -> Self {
        RowReader {
            sources,
            next_file: 0,
            current: None,
            number: 0,
            keep_raw,
            bytes: Arc::new(AtomicU64::new(0)),
            digest: None,
        }
    }

    /// Feed `digest` every byte read, each file preceded by
    /// `FILE_SEPARATOR`. Every format's reader reads its file to the end
    /// (a CSV or JSONL reader until it ends; a JSON array's reader checks
    /// that only white space follows the array), so once every row has
    /// been read the digest covers exactly the bytes the rows came from.
    pub fn digest(mut self, digest: Digest) -> Self {
        self.digest = Some(digest);
        self
    }

    pub fn sources(&self) -> &[Source] {
        &self.sources
    }

    /// Bytes consumed so far, across files.
    pub fn bytes_read(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Total size of all sources in bytes (for a progress bar).
    pub fn total_bytes(&self) -> u64 {
        total_bytes(&self.sources)
    }

    fn open_next(&mut self) -> Result<bool, InputError> {
        let Some(src) = self.sources.get(self.next_file).cloned() else {
            return Ok(false);
        };
        self.next_file += 1;
        let open = || {
            File::open(&src.path).map_err(|source| InputError::Open {
                path: src.path.clone(),
                source,
            })
        };
        let counting = Counting {
            inner: open()?,
            count: self.bytes.clone(),
            quotes: (src.format == Format::Csv).then(|| QuoteCheck::with_delimiter(src.delimiter)),
            digest: self.digest.clone(),
        };
        if let Some(d) = &self.digest {
            sha2::Digest::update(&mut *lock(d), FILE_SEPARATOR);
        }
        let reader = match src.format {
            Format::Csv => {
                let mut rdr = csv::ReaderBuilder::new()
                    .delimiter(src.delimiter)
                    .has_headers(true)
                    .flexible(false)
                    .from_reader(counting);
                let names: Vec<String> = match rdr.headers() {
                    Ok(h) => h.iter().map(str::to_string).collect(),
                    Err(e) => {
                        return Err(stray_text(&rdr, &src.path, 0, 1, None)
                            .unwrap_or_else(|| csv_error(&src.path, e, 0)));
                    }
                };
                if let Some(e) = stray_text(&rdr, &src.path, 0, 1, None) {
                    return Err(e);
                }
                if names.is_empty() || (names.len() == 1 && names[0].is_empty()) {
                    return Err(InputError::BadFile {
                        path: src.path.clone(),
                        message: "the file is empty: a CSV input needs a header row".into(),
                    });
                }
                let mut seen = HashMap::new();
                for (i, n) in names.iter().enumerate() {
                    if n.is_empty() {
                        return Err(InputError::Bad {
                            path: src.path.clone(),
                            line: 1,
                            message: format!("header column {} has no name", i + 1),
                        });
                    }
                    if let Some(prev) = seen.insert(n.clone(), i) {
                        return Err(InputError::Bad {
                            path: src.path.clone(),
                            line: 1,
                            message: format!(
                                "column `{n}` appears twice in the header (columns {} and {})",
                                prev + 1,
                                i + 1
                            ),
                        });
                    }
                }
                let len = std::fs::metadata(&src.path).map_or(u64::MAX, |m| m.len());
                let header_end = rdr.position().byte();
                let mut head = open()?;
                let mut first = [0u8; 1];
                let line_shift =
                    match std::io::Seek::seek(&mut head, std::io::SeekFrom::Start(header_end))
                        .and_then(|_| head.read(&mut first))
                    {
                        Ok(1) if first[0] == b'\n' => 1,
                        _ => 0,
                    };
                if header_end >= len {
                    // A header that runs to the end of the file may hold an
                    // unclosed quote that swallowed every row.
                    check_last_record(&src.path, src.delimiter, 0, 1, len)?;
                }
                let mut header = Header::new(names);
                let raw = if self.keep_raw {
                    let mut file = BufReader::new(open()?);
                    let mut at = 0;
                    let end = rdr.position().byte();
                    header.raw = Some(copy_span(&mut file, &mut at, 0, end).map_err(|source| {
                        InputError::Open {
                            path: src.path.clone(),
                            source,
                        }
                    })?);
                    Some((file, at))
                } else {
                    None
                };
                FileReader::Csv {
                    rdr,
                    header: Arc::new(header),
                    hint: (256, 8),
                    raw,
                    line_shift,
                    len,
                }
            }
            Format::Jsonl => FileReader::Jsonl {
                rdr: BufReader::with_capacity(1 << 16, counting),
                line: 0,
                buf: Vec::new(),
            },
            Format::Json => {
                let (tx, rx) = mpsc::sync_channel(1024);
                let path = src.path.clone();
                let keep_raw = self.keep_raw;
                std::thread::spawn(move || {
                    read_json_array(
                        BufReader::with_capacity(1 << 16, counting),
                        &path,
                        keep_raw,
                        tx,
                    )
                });
                FileReader::JsonArray { rx }
            }
        };
        self.current = Some(reader);
        Ok(true)
    }

    fn next_in_current(&mut self) -> Option<Result<Row, InputError>> {
        let file = self.next_file - 1;
        let path = &self.sources[file].path;
        let delimiter = self.sources[file].delimiter;
        let keep_raw = self.keep_raw;
        let reader = self.current.as_mut()?;
        let (line, fields, raw) = match reader {
            FileReader::Csv {
                rdr,
                header,
                hint,
                raw,
                line_shift,
                len,
            } => {
                let start = rdr.position().byte();
                let start_line = rdr.position().line();
                let mut record = csv::StringRecord::with_capacity(hint.0, hint.1);
                let row = Some(self.number + 1);
                match rdr.read_record(&mut record) {
                    Ok(false) => return None,
                    Ok(true) => {}
                    Err(e) => {
                        // Stray text after a quote is the likelier cause of
                        // a row with too many or too few fields.
                        return Some(Err(stray_text(rdr, path, start, start_line, row)
                            .unwrap_or_else(|| csv_error(path, e, *line_shift))));
                    }
                }
                if let Some(e) = stray_text(rdr, path, start, start_line, row) {
                    return Some(Err(e));
                }
                let line = record.position().map_or(0, |p| p.line()) + *line_shift;
                let end = rdr.position().byte();
                if end >= *len
                    && let Err(e) = check_last_record(path, delimiter, start, start_line, *len)
                {
                    return Some(Err(e));
                }
                let raw_text = match raw {
                    Some((file, at)) => match copy_span(file, at, start, end) {
                        Ok(t) => Some(t),
                        Err(e) => {
                            return Some(Err(InputError::Open {
                                path: path.clone(),
                                source: e,
                            }));
                        }
                    },
                    None => None,
                };
                *hint = (record.as_slice().len(), record.len());
                (
                    line,
                    Fields::Csv {
                        header: header.clone(),
                        record,
                    },
                    raw_text,
                )
            }
            FileReader::Jsonl { rdr, line, buf } => loop {
                buf.clear();
                match rdr.read_until(b'\n', buf) {
                    Ok(0) => return None,
                    Ok(_) => {}
                    Err(source) => {
                        return Some(Err(InputError::Open {
                            path: path.clone(),
                            source,
                        }));
                    }
                }
                *line += 1;
                if *line == 1 && buf.starts_with(BOM) {
                    // Editors on Windows start UTF-8 files with a byte
                    // order mark; the CSV reader skips it too.
                    buf.drain(..BOM.len());
                }
                let text = match std::str::from_utf8(buf) {
                    Ok(t) => t,
                    Err(e) => {
                        return Some(Err(InputError::Bad {
                            path: path.clone(),
                            line: *line,
                            message: format!(
                                "not valid UTF-8 (byte {} of the line); save the file as UTF-8",
                                e.valid_up_to() + 1
                            ),
                        }));
                    }
                };
                let trimmed = text.trim_end_matches(['\n', '\r']);
                if trimmed.trim().is_empty() {
                    continue;
                }
                match parse_object(trimmed) {
                    Ok(pairs) => {
                        let raw = keep_raw.then(|| trimmed.to_string());
                        break (*line, Fields::Object(pairs), raw);
                    }
                    Err(e) => {
                        return Some(Err(InputError::Bad {
                            path: path.clone(),
                            line: *line,
                            message: json_message(&e),
                        }));
                    }
                }
            },
            FileReader::JsonArray { rx } => match rx.recv() {
                Err(_) => return None,
                Ok(Err(e)) => return Some(Err(e)),
                Ok(Ok((element, pairs, raw))) => (element, Fields::Object(pairs), raw),
            },
        };
        self.number += 1;
        Some(Ok(Row {
            number: self.number,
            file,
            line,
            fields,
            raw,
        }))
    }
}

impl Iterator for RowReader {
    type Item = Result<Row, InputError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.current.is_some() {
                match self.next_in_current() {
                    Some(item) => {
                        if item.is_err() {
                            // Stop after the first error: later rows would be misnumbered.
                            self.current = None;
                            self.next_file = self.sources.len();
                        }
                        return Some(item);
                    }
                    None => self.current = None,
                }
            }
            match self.open_next() {
                Ok(true) => continue,
                Ok(false) => return None,
                Err(e) => {
                    self.next_file = self.sources.len();
                    return Some(Err(e));
                }
            }
        }
    }
}

/// Copy the bytes of one record, `start..end`, from the follower handle.
/// The CSV parser ends a record at the `\r` of a `\r\n` and leaves the
/// `\n` to the next one; the record's text takes its whole line end.
fn copy_span(
    file: &mut BufReader<File>,
    at: &mut u64,
    start: u64,
    end: u64,
) -> std::io::Result<String> {
    if *at < start {
        std::io::copy(&mut file.by_ref().take(start - *at), &mut std::io::sink())?;
        *at = start;
    }
    let mut bytes = vec![0; end.saturating_sub(*at) as usize];
    file.read_exact(&mut bytes)?;
    *at = (*at).max(end);
    if bytes.last() == Some(&b'\r') && file.fill_buf()?.first() == Some(&b'\n') {
        file.consume(1);
        bytes.push(b'\n');
        *at += 1;
    }
    String::from_utf8(bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// The error for text after the closing quote of a field that opened in
/// the record read last (`start..` the parser's position, starting on line
/// `start_line`), if the quote check saw one there: it names the line where
/// the field's quote opened.
fn stray_text(
    rdr: &csv::Reader<Counting<File>>,
    path: &Path,
    start: u64,
    start_line: u64,
    row: Option<u64>,
) -> Option<InputError> {
    let s = rdr.get_ref().quotes.as_ref()?.first()?;
    if s.opened >= rdr.position().byte() {
        return None;
    }
    // The error path only: read the record's bytes again for its lines.
    let read = || -> std::io::Result<Vec<u8>> {
        let mut f = File::open(path)?;
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(start))?;
        let mut bytes = Vec::new();
        f.take(s.at.saturating_sub(start) + 16)
            .read_to_end(&mut bytes)?;
        Ok(bytes)
    };
    let bytes = match read() {
        Ok(b) => b,
        Err(source) => {
            return Some(InputError::Open {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let lines_to = |offset: u64| {
        let end = (offset.saturating_sub(start) as usize).min(bytes.len());
        bytes[..end].iter().filter(|&&b| b == b'\n').count() as u64
    };
    let open_line = start_line + lines_to(s.opened);
    let close_line = start_line + lines_to(s.at);
    let from = (s.at.saturating_sub(start) as usize).min(bytes.len());
    let after: String = String::from_utf8_lossy(&bytes[from..])
        .chars()
        .take_while(|c| !matches!(c, '\n' | '\r' | ','))
        .take(10)
        .collect();
    Some(InputError::Bad {
        path: path.to_path_buf(),
        line: open_line,
        message: csvquote::message(row, close_line, open_line, &after),
    })
}

/// A CSV record that runs to the end of the file (`start..len`, starting on
/// line `start_line`) is refused when it ends inside a quoted field: the
/// parser would otherwise read every row after an unclosed quote as one cell.
fn check_last_record(
    path: &Path,
    delimiter: u8,
    start: u64,
    start_line: u64,
    len: u64,
) -> Result<(), InputError> {
    let read = || -> std::io::Result<Vec<u8>> {
        let mut f = File::open(path)?;
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(start))?;
        let mut bytes = Vec::new();
        f.take(len.saturating_sub(start)).read_to_end(&mut bytes)?;
        Ok(bytes)
    };
    let bytes = read().map_err(|source| InputError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    match unclosed_quote(&bytes, delimiter) {
        None => Ok(()),
        Some(lines_before) => {
            let total = bytes.iter().filter(|&&b| b == b'\n').count() as u64;
            let rest = total.saturating_sub(lines_before);
            Err(InputError::Bad {
                path: path.to_path_buf(),
                line: start_line + lines_before,
                message: format!(
                    "a quoted field starts on this line and its quote is never closed: the {} line{} from here to the end of the file would be read as one cell; close the quote (a quote inside a quoted field is written twice: \"\")",
                    rest,
                    if rest == 1 { "" } else { "s" }
                ),
            })
        }
    }
}

/// Where a CSV record ends inside a quoted field (RFC 4180 quoting, as the
/// csv crate reads it: `""` inside quotes is a quote; after a closing quote
/// the field goes on unquoted): the number of `\n` before the quote that
/// opened it. `None` when every quoted field closes.
fn unclosed_quote(record: &[u8], delimiter: u8) -> Option<u64> {
    #[derive(Clone, Copy)]
    enum S {
        FieldStart,
        Unquoted,
        Quoted,
        QuoteInQuoted,
    }
    let mut s = S::FieldStart;
    let mut lines = 0u64;
    let mut opened_at = 0u64;
    for &b in record {
        s = match (s, b) {
            (S::FieldStart, b'"') => {
                opened_at = lines;
                S::Quoted
            }
            (S::FieldStart | S::Unquoted | S::QuoteInQuoted, b'\n' | b'\r') => S::FieldStart,
            (S::FieldStart | S::Unquoted | S::QuoteInQuoted, d) if d == delimiter => S::FieldStart,
            (S::FieldStart | S::Unquoted, _) => S::Unquoted,
            (S::Quoted, b'"') => S::QuoteInQuoted,
            (S::Quoted, _) => S::Quoted,
            (S::QuoteInQuoted, b'"') => S::Quoted,
            (S::QuoteInQuoted, _) => S::Unquoted,
        };
        if b == b'\n' {
            lines += 1;
        }
    }
    matches!(s, S::Quoted).then_some(opened_at)
}

fn csv_error(path: &Path, e: csv::Error, line_shift: u64) -> InputError {
    let line = e.position().map_or(0, |p| p.line() + line_shift);
    let message = match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!(
            "row has {len} field{}, the header has {expected_len}; check for a missing or extra comma, or an unclosed quote",
            if *len == 1 { "" } else { "s" }
        ),
        csv::ErrorKind::Utf8 { err, .. } => format!(
            "not valid UTF-8 (field {}); save the file as UTF-8",
            err.field() + 1
        ),
        csv::ErrorKind::Io(io) => format!("read failed: {io}"),
        _ => e.to_string(),
    };
    if line == 0 {
        InputError::BadFile {
            path: path.to_path_buf(),
            message,
        }
    } else {
        InputError::Bad {
            path: path.to_path_buf(),
            line,
            message,
        }
    }
}

fn json_message(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    let msg = match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg,
    };
    match found_type(&msg) {
        Some(found) => format!("{found}, not a JSON object: every row must be a JSON object"),
        None => msg,
    }
}

/// What serde's "invalid type: map, expected ..." found, in JSON's words
/// ("an object", "a string"); `None` for other errors.
fn found_type(msg: &str) -> Option<&'static str> {
    let found = msg.strip_prefix("invalid type: ")?;
    let kind = found.split([' ', ',']).next().unwrap_or_default();
    Some(match kind {
        "map" => "an object",
        "sequence" => "an array",
        "string" => "a string",
        "integer" | "floating" => "a number",
        "boolean" => "true or false",
        "null" | "unit" => "null",
        _ => "a value of another kind",
    })
}

/// One JSON object as (key, cell) pairs in file order.
struct RowObject(Vec<(String, String)>);

impl<'de> Deserialize<'de> for RowObject {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RowObject;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RowObject, A::Error> {
                let mut pairs: Vec<(String, String)> = Vec::new();
                let mut seen: HashMap<String, ()> = HashMap::new();
                while let Some((k, v)) = map.next_entry::<String, Box<RawValue>>()? {
                    // JSON readers disagree on which of two equal keys wins
                    // (RFC 8259 section 4 leaves it open): refuse rather than
                    // grade, or key, a row by a value the user did not mean.
                    if seen.insert(k.clone(), ()).is_some() {
                        return Err(de::Error::custom(format!(
                            "the key `{k}` appears twice in one object; keep one"
                        )));
                    }
                    pairs.push((k, cell_text(v.get()).map_err(de::Error::custom)?));
                }
                Ok(RowObject(pairs))
            }
        }
        d.deserialize_map(V)
    }
}

fn parse_object(text: &str) -> Result<Vec<(String, String)>, serde_json::Error> {
    serde_json::from_str::<RowObject>(text).map(|o| o.0)
}

/// A JSON value's text as a cell.
pub fn cell_text(raw: &str) -> Result<String, serde_json::Error> {
    let raw = raw.trim();
    Ok(match raw.as_bytes().first() {
        Some(b'"') => serde_json::from_str::<String>(raw)?,
        Some(b'{') | Some(b'[') => minify(raw),
        _ if raw == "null" => String::new(),
        _ => raw.to_string(),
    })
}

/// Compact JSON text without re-parsing numbers (which would change their text).
fn minify(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut in_str = false;
    let mut escaped = false;
    for c in raw.chars() {
        if in_str {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
            }
        } else if c == '"' {
            in_str = true;
            out.push(c);
        } else if !c.is_whitespace() {
            out.push(c);
        }
    }
    out
}

/// The UTF-8 byte order mark.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Skip a byte order mark at the start of `reader`.
fn skip_bom(reader: &mut impl BufRead) {
    if reader.fill_buf().is_ok_and(|b| b.starts_with(BOM)) {
        reader.consume(BOM.len());
    }
}

/// The digest, even if a thread that held it panicked: a panic while
/// hashing leaves no half-done update behind that matters, since the plan
/// that panicked is not saved.
fn lock(d: &Digest) -> std::sync::MutexGuard<'_, sha2::Sha256> {
    d.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn read_json_array(
    reader: BufReader<Counting<File>>,
    path: &Path,
    keep_raw: bool,
    tx: mpsc::SyncSender<JsonMsg>,
) {
    struct Elements<'a> {
        tx: &'a mpsc::SyncSender<JsonMsg>,
        keep_raw: bool,
        count: &'a mut u64,
    }
    impl<'de> DeserializeSeed<'de> for Elements<'_> {
        type Value = ();
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_seq(self)
        }
    }
    impl<'de> Visitor<'de> for Elements<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON array of objects")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            loop {
                *self.count += 1;
                let (pairs, raw) = if self.keep_raw {
                    // `split` copies elements verbatim, so keep the exact text.
                    let Some(raw) = seq.next_element::<Box<RawValue>>()? else {
                        *self.count -= 1;
                        return Ok(());
                    };
                    let pairs = parse_object(raw.get()).map_err(de::Error::custom)?;
                    (pairs, Some(raw.get().to_string()))
                } else {
                    let Some(obj) = seq.next_element::<RowObject>()? else {
                        *self.count -= 1;
                        return Ok(());
                    };
                    (obj.0, None)
                };
                if self.tx.send(Ok((*self.count, pairs, raw))).is_err() {
                    return Err(de::Error::custom("reader closed"));
                }
            }
        }
    }
    let mut reader = reader;
    skip_bom(&mut reader);
    let mut count = 0u64;
    let mut de = serde_json::Deserializer::from_reader(reader);
    let result = Elements {
        tx: &tx,
        keep_raw,
        count: &mut count,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end());
    if let Err(e) = result {
        let message = if count == 0 {
            match found_type(&e.to_string()) {
                Some(found) => format!(
                    "the file holds {found}, not an array of objects (line {}); a JSON input is an array of objects, `[{{...}}, {{...}}]`; for one object per line use JSONL (a .jsonl file, or input.format: jsonl)",
                    e.line()
                ),
                None => format!(
                    "{} (line {}); a JSON input must be an array of objects",
                    json_message(&e),
                    e.line()
                ),
            }
        } else {
            format!(
                "element {count}: {} (line {}, column {})",
                json_message(&e),
                e.line(),
                e.column()
            )
        };
        let _ = tx.send(Err(InputError::Bad {
            path: path.to_path_buf(),
            line: e.line() as u64,
            message,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_hint_is_the_files_size_or_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, bytes: usize| {
            let p = dir.path().join(name);
            std::fs::write(&p, "x".repeat(bytes)).unwrap();
            Source {
                path: p,
                format: Format::Csv,
                delimiter: b',',
            }
        };
        let (a, b) = (file("a.csv", 10), file("b.csv", 32));
        let folder = Source {
            path: dir.path().to_path_buf(),
            format: Format::Csv,
            delimiter: b',',
        };
        let missing = Source {
            path: dir.path().join("gone.csv"),
            format: Format::Csv,
            delimiter: b',',
        };
        let cases = [
            (vec![a.clone()], 10),
            (vec![a.clone(), b.clone()], 42),
            (vec![], 0),
            (vec![a.clone(), folder], u64::MAX),
            (vec![missing, b.clone()], u64::MAX),
        ];
        for (sources, want) in cases {
            assert_eq!(size_hint(&sources), want, "{sources:?}");
        }
    }

    #[test]
    fn unclosed_quotes_are_found() {
        let cases: [(&str, Option<u64>); 10] = [
            ("a,b\n", None),
            ("a,\"b\"\n", None),
            ("a,\"b\nc\"\n", None),
            ("a,\"say \"\"hi\"\"\"\n", None),
            ("a,5\" screen\n", None),
            ("a,\"b\"x,c\n", None),
            ("a,\"b\nc,d\ne,f\n", Some(0)),
            ("\na,\"b\nc\n", Some(1)),
            ("a,\"x\ny\",\"open\nrest\n", Some(1)),
            ("a,\"b\"\"\n", Some(0)),
        ];
        for (text, want) in cases {
            assert_eq!(unclosed_quote(text.as_bytes(), b','), want, "{text:?}");
        }
    }

    fn read_csv(text: &str) -> Vec<Result<Row, InputError>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.csv");
        std::fs::write(&path, text).unwrap();
        let src = Source::new(&path, None).unwrap();
        RowReader::new(vec![src], false).collect()
    }

    #[test]
    fn an_unclosed_quote_is_an_error_at_its_line() {
        let mut text = String::from("id,text\nx1,one\nx2,\"never closed\n");
        for i in 3..1000 {
            text.push_str(&format!("x{i},row {i}\n"));
        }
        let rows = read_csv(&text);
        let err = rows.into_iter().find_map(Result::err).expect("an error");
        match err {
            InputError::Bad { line, message, .. } => {
                assert_eq!(line, 3, "{message}");
                assert!(message.contains("998 lines from here"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        // A header whose quote never closes.
        let err = read_csv("id,\"text\nx1,a\n")
            .into_iter()
            .find_map(Result::err);
        assert!(
            matches!(err, Some(InputError::Bad { line: 1, .. })),
            "{err:?}"
        );
        // A last field that is quoted and closed is fine.
        assert!(read_csv("id,text\nx1,\"a\nb\"\n").iter().all(Result::is_ok));
    }

    #[test]
    fn crlf_lines_are_counted_like_lf_lines() {
        for end in ["\n", "\r\n"] {
            let text = ["id,text", "x1,a", "x2,\"b", "c\"", "x3,d", ""].join(end);
            let lines: Vec<u64> = read_csv(&text)
                .into_iter()
                .map(|r| r.unwrap().line)
                .collect();
            assert_eq!(lines, [2, 3, 5], "line end {end:?}");
            let bad = ["id,text", "x1,a", "x2", ""].join(end);
            let err = read_csv(&bad).into_iter().find_map(Result::err);
            assert!(
                matches!(err, Some(InputError::Bad { line: 3, .. })),
                "{end:?}: {err:?}"
            );
        }
    }

    #[test]
    fn cells_keep_their_text() {
        let cases = [
            (r#""007""#, "007"),
            (r#""""#, ""),
            ("12.50", "12.50"),
            ("1e3", "1e3"),
            ("-0", "-0"),
            ("true", "true"),
            ("null", ""),
            (
                r#"{ "a" : [1, 2.0] , "b":"x y" }"#,
                r#"{"a":[1,2.0],"b":"x y"}"#,
            ),
            (r#""line\nbreak \u00e9""#, "line\nbreak é"),
        ];
        for (raw, want) in cases {
            assert_eq!(cell_text(raw).unwrap(), want, "{raw}");
        }
    }
}
