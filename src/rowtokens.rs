//! Token counts per input row, shared by `tokens` and `split`.
//!
//! The target is either a job spec (rows are counted as the requests the
//! plan would send) or a bare data file (rows are counted as their text:
//! one column, or every cell joined by newlines).

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::input::{Row, RowReader, Source};
use crate::prompt::Prompt;
use crate::spec::{self, Format};
use crate::tokenize::{Counter, Encoding, encoding_for_model};

/// What to count, resolved from the command line.
pub struct Target {
    pub sources: Vec<Source>,
    pub model: String,
    pub encoding: Encoding,
    /// The model's tokenizer is a guess (unknown model name).
    pub guessed: bool,
    kind: Kind,
}

enum Kind {
    Spec { prompt: Box<Prompt> },
    File { column: Option<String> },
}

/// Is this path a job spec (by extension)?
pub fn is_spec(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

impl Target {
    /// Resolve `SPEC|FILE`. `model` overrides the spec's; `column` applies to files only.
    pub fn resolve(
        path: &Path,
        model: Option<&str>,
        column: Option<&str>,
        format: Option<Format>,
    ) -> Result<Target> {
        if is_spec(path) {
            if column.is_some() {
                return Err(Error::usage(
                    "--column applies to a data file; with a spec, rows are counted as the requests the plan sends",
                ));
            }
            let spec = spec::load(path)?;
            let prompt = Prompt::load(&spec)?;
            let model = model.unwrap_or(spec.model()).to_string();
            let sources = spec
                .inputs
                .iter()
                .map(|p| {
                    Source::new(p, format.or(spec.input().format)).map(|s| Source {
                        delimiter: spec.input().delimiter_byte(),
                        ..s
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let (encoding, guessed) = encoding_for_model(&model);
            Ok(Target {
                sources,
                model,
                encoding,
                guessed,
                kind: Kind::Spec {
                    prompt: Box::new(prompt),
                },
            })
        } else {
            let model = model.unwrap_or("gpt-4o-mini").to_string();
            let (encoding, guessed) = encoding_for_model(&model);
            Ok(Target {
                sources: vec![Source::new(path, format)?],
                model,
                encoding,
                guessed,
                kind: Kind::File {
                    column: column.map(str::to_string),
                },
            })
        }
    }

    pub fn input_paths(&self) -> Vec<PathBuf> {
        self.sources.iter().map(|s| s.path.clone()).collect()
    }

    /// Visit every row with its token count, in input order. Counting runs
    /// on all cores in batches; `visit` runs on this thread.
    pub fn for_each(
        &self,
        counter: &Counter,
        keep_raw: bool,
        mut on_progress: impl FnMut(u64),
        mut visit: impl FnMut(&Row, u64, &[Source]) -> Result<()>,
    ) -> Result<()> {
        let fixed = match &self.kind {
            Kind::Spec { prompt, .. } => counter.fixed_chat_tokens(prompt.system.as_deref()) as u64,
            Kind::File { .. } => 0,
        };
        let mut reader = RowReader::new(self.sources.clone(), keep_raw);
        let mut batch: Vec<Row> = Vec::with_capacity(4096);
        loop {
            batch.clear();
            for row in reader.by_ref().take(4096) {
                batch.push(row?);
            }
            if batch.is_empty() {
                return Ok(());
            }
            let counts: Vec<Result<u64, String>> = batch
                .par_iter()
                .map(|row| self.row_tokens(row, counter, fixed))
                .collect();
            for (row, count) in batch.iter().zip(counts) {
                let count = count.map_err(|col| {
                    Error::usage(format!(
                        "{}: no column `{col}`; the columns are: {}",
                        crate::input::row_place(reader.sources(), row),
                        row.column_names().join(", ")
                    ))
                })?;
                visit(row, count, reader.sources())?;
            }
            on_progress(reader.bytes_read());
        }
    }

    fn row_tokens(&self, row: &Row, counter: &Counter, fixed: u64) -> Result<u64, String> {
        match &self.kind {
            // The same count as `plan`: the fixed chat part plus the user text.
            Kind::Spec { prompt } => {
                let user = prompt.user.render(|k| row.get(k))?;
                Ok(fixed + counter.count(&user) as u64)
            }
            Kind::File { column: Some(c) } => {
                Ok(counter.count(row.get(c).ok_or_else(|| c.clone())?) as u64)
            }
            Kind::File { column: None } => {
                let text: Vec<&str> = row.cells().into_iter().map(|(_, v)| v).collect();
                Ok(counter.count(&text.join("\n")) as u64)
            }
        }
    }

    pub fn total_bytes(&self) -> u64 {
        crate::input::total_bytes(&self.sources)
    }
}
