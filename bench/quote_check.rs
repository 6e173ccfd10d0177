//! What the CSV quote check (`csvquote::QuoteCheck`) adds to reading a CSV:
//! the same file read three ways, each from memory in the 8 KB pieces the
//! csv crate's reader asks for, median of RUNS (default 5):
//!
//! - `parse`: the csv crate parsing every record (what `RowReader` does
//!   before any tokenizing);
//! - `parse+check`: the same with `QuoteCheck::feed` on each piece, as
//!   `input.rs` runs it;
//! - `check`: the quote check alone.
//!
//!   cargo run --release --example quote_check -- FILE.csv
//!   (bench/gen_rows.py makes one: `python3 bench/gen_rows.py 100000 rich.csv --style rich`)

use std::io::Read;
use std::time::Instant;

use batchgrader::csvquote::QuoteCheck;

/// Hands out the bytes in pieces of at most 8 KB, feeding the check when
/// there is one.
struct Pieces<'a> {
    bytes: &'a [u8],
    check: Option<QuoteCheck>,
}

impl Read for Pieces<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(8192).min(self.bytes.len());
        buf[..n].copy_from_slice(&self.bytes[..n]);
        self.bytes = &self.bytes[n..];
        if let Some(c) = &mut self.check {
            c.feed(&buf[..n]);
        }
        Ok(n)
    }
}

fn parse(bytes: &[u8], check: bool) -> (u64, bool) {
    let pieces = Pieces {
        bytes,
        check: check.then(QuoteCheck::default),
    };
    let mut rdr = csv::ReaderBuilder::new().from_reader(pieces);
    let mut record = csv::StringRecord::new();
    let mut n = 0;
    while rdr.read_record(&mut record).expect("a valid CSV") {
        n += 1;
    }
    let stray = rdr.get_ref().check.as_ref().and_then(QuoteCheck::first);
    (n, stray.is_some())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: quote_check FILE.csv");
    let bytes = std::fs::read(&path).expect("the file reads");
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let mb = bytes.len() as f64 / 1e6;
    let (mut p, mut pc, mut c) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let t = Instant::now();
        let (rows, _) = parse(&bytes, false);
        p.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let (rows2, stray) = parse(&bytes, true);
        pc.push(t.elapsed().as_secs_f64());
        assert_eq!(rows, rows2);
        assert!(!stray, "the file has text after a closing quote");
        let t = Instant::now();
        let mut q = QuoteCheck::default();
        for piece in bytes.chunks(8192) {
            q.feed(piece);
        }
        c.push(t.elapsed().as_secs_f64());
        assert!(q.first().is_none());
    }
    let (p, pc, c) = (median(p), median(pc), median(c));
    println!("{path}: {mb:.1} MB, median of {runs}");
    println!("parse        {:.3} s  {:.0} MB/s", p, mb / p);
    println!(
        "parse+check  {:.3} s  {:.0} MB/s  ({:+.1}% over parse)",
        pc,
        mb / pc,
        (pc / p - 1.0) * 100.0
    );
    println!("check alone  {:.3} s  {:.0} MB/s", c, mb / c);
}
