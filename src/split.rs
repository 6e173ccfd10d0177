//! `split`: cut an input into parts under a token, row or byte limit, in
//! the same format, each row copied verbatim (the old split mode).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::chunking::{Item, Limits, Packer, check_item};
use crate::error::{Error, Result};
use crate::input::{Fields, Row, Source, row_place};
use crate::rowtokens::Target;
use crate::spec::Format;
use crate::tokenize::Counter;

#[derive(Debug, Clone, Serialize)]
pub struct Part {
    pub path: String,
    pub rows: u64,
    pub tokens: u64,
    pub bytes: u64,
}

/// Limits for one part; `None` means no limit of that kind.
#[derive(Debug, Clone, Copy)]
pub struct SplitLimits {
    pub max_tokens: Option<u64>,
    pub max_rows: Option<u64>,
    pub max_bytes: Option<u64>,
}

struct Writer {
    format: Format,
    path: PathBuf,
    out: BufWriter<File>,
    rows: u64,
    tokens: u64,
    bytes: u64,
}

impl Writer {
    fn create(format: Format, path: PathBuf, header: Option<&str>) -> Result<Writer> {
        let file = File::create(&path).map_err(|e| Error::io("create", &path, e))?;
        let mut w = Writer {
            format,
            out: BufWriter::new(file),
            path,
            rows: 0,
            tokens: 0,
            bytes: 0,
        };
        match format {
            Format::Csv => w.write(header.unwrap_or_default().as_bytes())?,
            Format::Json => w.write(b"[\n")?,
            Format::Jsonl => {}
        }
        Ok(w)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.out
            .write_all(bytes)
            .map_err(|e| Error::io("write", &self.path, e))
    }

    fn row(&mut self, raw: &str, tokens: u64) -> Result<()> {
        match self.format {
            Format::Csv => {
                self.write(raw.as_bytes())?;
                // The last record of a file may lack its line end.
                if !raw.ends_with('\n') {
                    self.write(b"\n")?;
                }
            }
            Format::Jsonl => {
                self.write(raw.as_bytes())?;
                self.write(b"\n")?;
            }
            Format::Json => {
                if self.rows > 0 {
                    self.write(b",\n")?;
                }
                self.write(raw.as_bytes())?;
            }
        }
        self.rows += 1;
        self.tokens += tokens;
        self.bytes += raw.len() as u64;
        Ok(())
    }

    fn finish(mut self) -> Result<Part> {
        if self.format == Format::Json {
            self.write(b"\n]\n")?;
        }
        self.out
            .flush()
            .map_err(|e| Error::io("write", &self.path, e))?;
        Ok(Part {
            path: self.path.display().to_string(),
            rows: self.rows,
            tokens: self.tokens,
            bytes: self.bytes,
        })
    }
}

/// Split the target's single input into parts in `out_dir`.
pub fn split(
    target: &Target,
    counter: &Counter,
    limits: SplitLimits,
    out_dir: &Path,
    mut on_progress: impl FnMut(u64),
) -> Result<Vec<Part>> {
    if target.sources.len() != 1 {
        return Err(Error::usage(format!(
            "split takes one input file; the spec lists {}",
            target.sources.len()
        )));
    }
    if limits.max_tokens.is_none() && limits.max_rows.is_none() && limits.max_bytes.is_none() {
        return Err(Error::usage_with_hint(
            "split needs a limit",
            "give --max-tokens, --max-rows or --max-bytes",
        ));
    }
    let source = &target.sources[0];
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io("create", out_dir, e))?;
    let stem = source
        .path
        .file_stem()
        .map_or("part".into(), |s| s.to_string_lossy().into_owned());
    let ext = source
        .path
        .extension()
        .map_or(source.format.to_string(), |e| {
            e.to_string_lossy().into_owned()
        });
    let part_path = |n: usize| out_dir.join(format!("{stem}.part-{n:04}.{ext}"));
    let packer_limits = Limits {
        max_requests: limits.max_rows.unwrap_or(u64::MAX),
        max_bytes: limits.max_bytes.unwrap_or(u64::MAX),
        max_tokens: limits.max_tokens,
        forced_chunks: None,
    };
    let mut packer = Packer::new(packer_limits, 0);
    let mut parts = Vec::new();
    let mut current: Option<Writer> = None;
    target.for_each(
        counter,
        true,
        &mut on_progress,
        |row: &Row, tokens, sources: &[Source]| {
            let raw = row.raw.as_deref().unwrap_or_default();
            let item = Item {
                tokens,
                bytes: raw.len() as u64,
            };
            check_item(&item, 0, &packer_limits).map_err(|e| {
                Error::usage(format!(
                    "{} (row {}) alone is over the limit: {e}",
                    row_place(sources, row),
                    row.number
                ))
            })?;
            if packer.push(item).is_some()
                && let Some(w) = current.take()
            {
                parts.push(w.finish()?);
            }
            if current.is_none() {
                let header = match &row.fields {
                    Fields::Csv { header, .. } => header.raw.clone(),
                    Fields::Object(_) => None,
                };
                current = Some(Writer::create(
                    source.format,
                    part_path(parts.len() + 1),
                    header.as_deref(),
                )?);
            }
            current.as_mut().expect("just created").row(raw, tokens)
        },
    )?;
    if let Some(w) = current.take() {
        parts.push(w.finish()?);
    }
    // Parts past the last one, left by an earlier split of the same file
    // into more parts: `cat parts/*` would read their rows twice.
    let mut n = parts.len() + 1;
    while part_path(n).is_file() {
        let stale = part_path(n);
        std::fs::remove_file(&stale).map_err(|e| Error::io("remove", stale, e))?;
        n += 1;
    }
    Ok(parts)
}
