//! Benchmark baseline for `bench/plan`: the bare work of counting o200k_base
//! tokens of every `text` cell of a CSV on two threads. The performance
//! budget wants `batchgrader plan` within 1.3x of this time.
//!
//!     bare_count ROWS.csv        (prints `rows N` and `tokens N`)
//!
//! Rows are read in batches of BATCH and each batch is counted in parallel,
//! so memory stays flat however large the file is.
use anyhow::{Context, Result, bail};
use rayon::prelude::*;

const BATCH: usize = 4096;

fn main() -> Result<()> {
    let path = std::env::args()
        .nth(1)
        .context("usage: bare_count FILE.csv")?;
    rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build_global()?;
    let bpe = tiktoken_rs::o200k_base()?;
    let mut reader =
        csv::Reader::from_path(&path).with_context(|| format!("cannot open {path}"))?;
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
    println!("rows {rows}\ntokens {tokens}");
    Ok(())
}
