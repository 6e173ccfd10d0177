//! The requests of a pass, streamed from the plan: its chunk files (the
//! request lines, in plan order) walked in step with its request records
//! (row, fingerprint, tokens), so memory stays flat however many rows the
//! job has. The same request is sent that a batch would carry: the line's
//! body as it is, or the Messages params its Message Batches request holds
//! (`Protocol::encode`).

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::apply::decide::RequestState;
use crate::error::{Error, Result};
use crate::provider::direct::Protocol;
use crate::state::{RequestRecord, StateError, custom_id};

/// One request to send.
#[derive(Debug, Clone)]
pub struct Req {
    pub fingerprint: String,
    /// Prompt tokens plus the request's output cap (for `tokens_per_minute`).
    pub rate_tokens: u64,
    pub body: bytes::Bytes,
    /// Where it stood before this run recorded anything for it.
    pub before: RequestState,
    /// Attempts that failed in this pass and count against the retry budget.
    pub tries: u32,
    /// 429s met in this pass (pacing, not failures).
    pub limited: u32,
    /// Not sent again before this (ms since the run started).
    pub not_before_ms: u64,
}

#[derive(Deserialize)]
struct Line<'a> {
    #[serde(borrow)]
    custom_id: &'a str,
    #[serde(borrow)]
    body: &'a RawValue,
}

pub struct Source<'a, I: Iterator<Item = std::result::Result<RequestRecord, StateError>>> {
    files: Vec<PathBuf>,
    next_file: usize,
    reader: Option<(BufReader<File>, PathBuf, usize)>,
    records: I,
    /// What to send, by the request's position among the plan's outstanding
    /// requests, with its state before this pass.
    wanted: &'a dyn Fn(u64, &RequestRecord) -> Option<RequestState>,
    output_cap: u64,
    protocol: &'a Protocol,
    line: String,
}

impl<'a, I: Iterator<Item = std::result::Result<RequestRecord, StateError>>> Source<'a, I> {
    pub fn new(
        files: Vec<PathBuf>,
        records: I,
        wanted: &'a dyn Fn(u64, &RequestRecord) -> Option<RequestState>,
        output_cap: u64,
        protocol: &'a Protocol,
    ) -> Self {
        Source {
            files,
            next_file: 0,
            reader: None,
            records,
            wanted,
            output_cap,
            protocol,
            line: String::new(),
        }
    }

    /// The next request line of the plan, with its file and line number.
    fn next_line(&mut self) -> Result<Option<(PathBuf, usize)>> {
        loop {
            if self.reader.is_none() {
                let Some(path) = self.files.get(self.next_file).cloned() else {
                    return Ok(None);
                };
                self.next_file += 1;
                let f = File::open(&path).map_err(|e| Error::io("read", &path, e))?;
                self.reader = Some((BufReader::with_capacity(1 << 16, f), path, 0));
            }
            let (r, path, n) = self.reader.as_mut().expect("opened above");
            self.line.clear();
            let read = r
                .read_line(&mut self.line)
                .map_err(|e| Error::io("read", path.as_path(), e))?;
            if read == 0 {
                self.reader = None;
                continue;
            }
            *n += 1;
            if self.line.trim().is_empty() {
                continue;
            }
            return Ok(Some((path.clone(), *n)));
        }
    }

    /// The next request to send, or `None` at the end of the plan.
    pub fn next_req(&mut self) -> Result<Option<Req>> {
        loop {
            let Some((path, n)) = self.next_line()? else {
                return Ok(None);
            };
            // The records of outstanding requests come in the chunk files' order.
            let record = loop {
                match self.records.next() {
                    Some(r) => {
                        let r = r?;
                        if r.seq.is_some() {
                            break r;
                        }
                    }
                    None => return Err(damaged(&path, n, "more request lines than records")),
                }
            };
            let line: Line = serde_json::from_str(&self.line)
                .map_err(|e| damaged(&path, n, &format!("not a request line: {e}")))?;
            if line.custom_id != custom_id(record.row) {
                return Err(damaged(
                    &path,
                    n,
                    &format!(
                        "request `{}` where the records have row {}",
                        line.custom_id, record.row
                    ),
                ));
            }
            let seq = record.seq.expect("checked above");
            let Some(before) = (self.wanted)(seq, &record) else {
                continue;
            };
            let body = self
                .protocol
                .encode(line.body.get())
                .map_err(|e| damaged(&path, n, &e))?;
            return Ok(Some(Req {
                rate_tokens: record.tokens + self.output_cap,
                fingerprint: record.fingerprint,
                body,
                before,
                tries: 0,
                limited: 0,
                not_before_ms: 0,
            }));
        }
    }
}

fn damaged(path: &std::path::Path, line: usize, what: &str) -> Error {
    Error::runtime_with_hint(
        format!(
            "the plan's request file {}:{line} does not match its records: {what}",
            path.display()
        ),
        "the state folder was changed by hand; run `batchgrader plan SPEC` again to rebuild it",
    )
}
