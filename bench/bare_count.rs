//! Benchmark baselines for `bench/plan`: the bare work of counting
//! o200k_base tokens of every text on two threads.
//!
//!     bare_count ROWS.csv          the `text` cell of every row of a CSV,
//!                                  read in batches and counted with one
//!                                  shared encoder on rayon's pool
//!     bare_count --text TEXTS.txt  texts from a plain text file (each ended
//!                                  by a 0x1E byte, see gen_rows.py --texts),
//!                                  no CSV to parse, one encoder per thread
//!     bare_count --text-shared TEXTS.txt
//!                                  the same with one encoder shared by both
//!                                  threads, as tiktoken-rs is used plainly
//!
//! All print `rows N` and `tokens N`. The text baselines are the budget's
//! yardsticks: `batchgrader plan` within 1.3x of bare tiktoken-rs on two
//! threads (`--text-shared`), and, the stretch, within 1.3x of the counting
//! itself with one encoder per thread (`--text`).
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result, bail};
use rayon::prelude::*;

const BATCH: usize = 4096;
const THREADS: usize = 2;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (rows, tokens) = match args.as_slice() {
        [flag, path] if flag == "--text" => count_text_file(path, false)?,
        [flag, path] if flag == "--text-shared" => count_text_file(path, true)?,
        [path] => count_csv(path)?,
        _ => bail!("usage: bare_count FILE.csv | bare_count --text|--text-shared FILE.txt"),
    };
    println!("rows {rows}\ntokens {tokens}");
    Ok(())
}

/// Every text of the file, on THREADS threads that take texts in blocks
/// from a shared cursor, each with an encoder of its own (an encoder's regex
/// keeps a scratch pool that contends when two threads share it), or, with
/// `shared`, all with one.
fn count_text_file(path: &str, shared: bool) -> Result<(u64, u64)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {path}"))?;
    let text = std::str::from_utf8(&bytes).with_context(|| format!("{path}: not UTF-8"))?;
    let texts: Vec<&str> = text.split_terminator('\x1e').collect();
    let next = AtomicUsize::new(0);
    let one = if shared {
        Some(tiktoken_rs::o200k_base()?)
    } else {
        None
    };
    let totals = std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                s.spawn(|| -> Result<u64> {
                    let own;
                    let bpe = match &one {
                        Some(bpe) => bpe,
                        None => {
                            own = tiktoken_rs::o200k_base()?;
                            &own
                        }
                    };
                    let mut tokens = 0u64;
                    loop {
                        let start = next.fetch_add(256, Ordering::Relaxed);
                        let Some(block) = texts.get(start..(start + 256).min(texts.len())) else {
                            return Ok(tokens);
                        };
                        if block.is_empty() {
                            return Ok(tokens);
                        }
                        tokens += block
                            .iter()
                            .map(|t| bpe.count_ordinary(t) as u64)
                            .sum::<u64>();
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("counting thread"))
            .collect::<Result<Vec<u64>>>()
    })?;
    Ok((texts.len() as u64, totals.iter().sum()))
}

/// The `text` cell of every CSV row, read in batches of BATCH, each batch
/// counted in parallel, so memory stays flat however large the file is.
fn count_csv(path: &str) -> Result<(u64, u64)> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(THREADS)
        .build_global()?;
    let bpe = tiktoken_rs::o200k_base()?;
    let mut reader = csv::Reader::from_path(path).with_context(|| format!("cannot open {path}"))?;
    let Some(col) = reader.headers()?.iter().position(|h| h == "text") else {
        bail!("{path}: no column named `text`");
    };
    let (mut rows, mut tokens) = (0u64, 0u64);
    let mut batch: Vec<String> = Vec::with_capacity(BATCH);
    let mut record = csv::StringRecord::new();
    loop {
        let more = reader.read_record(&mut record)?;
        if more {
            batch.push(record.get(col).unwrap_or_default().to_owned());
        }
        if batch.len() == BATCH || (!more && !batch.is_empty()) {
            tokens += batch
                .par_iter()
                .map(|t| bpe.count_ordinary(t) as u64)
                .sum::<u64>();
            rows += batch.len() as u64;
            batch.clear();
        }
        if !more {
            break;
        }
    }
    Ok((rows, tokens))
}
