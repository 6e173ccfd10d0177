//! Prices and cost arithmetic. The price table is `config/pricing.csv`
//! (USD per 1M tokens, standard and batch); a model is priced by the longest
//! table entry that prefixes its name, so dated snapshots such as
//! `gpt-4o-mini-2024-07-18` find `gpt-4o-mini`.
//!
//! Two further columns price the prompt cache: `cached_input_per_1m` (an
//! input token read from the cache: OpenAI's "cached input", Anthropic's
//! `cache_read_input_tokens`) and `cache_write_per_1m` (a token written to
//! the cache: Anthropic's `cache_creation_input_tokens`; OpenAI bills no
//! write apart from input). Both are standard prices; the batch discount
//! applies to them as to plain input (OpenAI's pricing page lists batch
//! cached input at half the cached price; Anthropic's pricing page says the
//! batch discount stacks with the cache multipliers), so the batch price is
//! the column scaled by the model's batch-to-standard input ratio. An empty
//! cell, or a table without the columns, prices cache tokens as plain input:
//! no saving is ever claimed from a price the table does not have.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The table shipped in the binary, used when no file is given or found.
pub const BUILTIN_PRICING: &str = include_str!("../config/pricing.csv");

/// The price table read from the working folder when no other is named.
pub const LOCAL_PRICING: &str = "config/pricing.csv";

#[derive(Debug, thiserror::Error)]
pub enum PricingError {
    #[error("cannot read price table {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{source_name}:{line}: {message}")]
    Bad {
        source_name: String,
        line: usize,
        message: String,
    },
    #[error(
        "model `{model}` has no price in {source_name}, and halt.max_cost_usd needs one to check the budget"
    )]
    Unpriced { model: String, source_name: String },
}

impl PricingError {
    pub fn hint(&self) -> Option<String> {
        match self {
            PricingError::Unpriced { .. } => Some(
                "add a row for the model to config/pricing.csv (or the file given with --pricing), or remove halt.max_cost_usd"
                    .into(),
            ),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Price {
    pub model: String,
    pub input_per_1m: f64,
    pub output_per_1m: f64,
    pub batch_input_per_1m: f64,
    pub batch_output_per_1m: f64,
    pub prices_as_of: String,
    /// A prompt-cache read, USD per 1M at standard prices; `None` when the
    /// table has no such price for the model (read as plain input then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input_per_1m: Option<f64>,
    /// A prompt-cache write, USD per 1M at standard prices; `None`: plain input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_per_1m: Option<f64>,
}

impl Price {
    /// The input price this lane pays: `batch` prices or standard ones.
    fn input(&self, batch: bool) -> f64 {
        if batch {
            self.batch_input_per_1m
        } else {
            self.input_per_1m
        }
    }

    /// A cache-column price at this lane's prices: the standard price
    /// scaled by the batch discount the model's input gets.
    fn cache_column(&self, column: Option<f64>, batch: bool) -> f64 {
        match column {
            None => self.input(batch),
            Some(standard) if batch && self.input_per_1m > 0.0 => {
                standard * self.batch_input_per_1m / self.input_per_1m
            }
            Some(standard) => standard,
        }
    }

    /// A cache read's price per 1M tokens, at batch or standard prices.
    pub fn cache_read_per_1m(&self, batch: bool) -> f64 {
        self.cache_column(self.cached_input_per_1m, batch)
    }

    /// A cache write's price per 1M tokens, at batch or standard prices.
    pub fn cache_write_per_1m(&self, batch: bool) -> f64 {
        self.cache_column(self.cache_write_per_1m, batch)
    }

    /// The same model at standard prices in the `batch_*` fields: what a
    /// direct-mode job pays, so every cost computed from the plan is right.
    pub fn at_standard_prices(mut self) -> Price {
        self.batch_input_per_1m = self.input_per_1m;
        self.batch_output_per_1m = self.output_per_1m;
        self
    }

    /// True when there is no batch discount (a direct-mode plan).
    pub fn is_standard(&self) -> bool {
        self.batch_input_per_1m == self.input_per_1m
            && self.batch_output_per_1m == self.output_per_1m
    }
}

#[derive(Debug, Clone)]
pub struct PriceTable {
    /// Where the table came from, for messages (`config/pricing.csv`, `built-in prices`).
    pub source_name: String,
    pub prices: Vec<Price>,
    /// What the user should know about the table (an old table without the
    /// cache columns); shown with the plan's warnings.
    pub warnings: Vec<String>,
}

/// The header of the table, every column.
pub const HEADER: &str = "model,input_per_1m,output_per_1m,batch_input_per_1m,batch_output_per_1m,cached_input_per_1m,cache_write_per_1m,prices_as_of";

/// The header of tables written before the cache columns; still read.
const OLD_HEADER: &str =
    "model,input_per_1m,output_per_1m,batch_input_per_1m,batch_output_per_1m,prices_as_of";

impl PriceTable {
    /// The table to use: an explicit file, else `config/pricing.csv` in the
    /// working folder when present, else the built-in copy.
    pub fn load(explicit: Option<&Path>) -> Result<PriceTable, PricingError> {
        let path = match explicit {
            Some(p) => Some(p.to_path_buf()),
            None => {
                let local = PathBuf::from(LOCAL_PRICING);
                local.is_file().then_some(local)
            }
        };
        match path {
            Some(path) => {
                let text = std::fs::read_to_string(&path).map_err(|source| PricingError::Read {
                    path: path.clone(),
                    source,
                })?;
                PriceTable::parse(&path.display().to_string(), &text)
            }
            None => PriceTable::parse("built-in prices", BUILTIN_PRICING),
        }
    }

    pub fn parse(source_name: &str, text: &str) -> Result<PriceTable, PricingError> {
        let bad = |line: usize, message: String| PricingError::Bad {
            source_name: source_name.to_string(),
            line,
            message,
        };
        let mut prices = Vec::new();
        // The line of each price, for messages.
        let mut lines: Vec<usize> = Vec::new();
        let mut header_seen = false;
        // 8 columns, or 6 in a table written before the cache columns: the
        // header says which, else the first row does; every row must agree.
        let mut width: Option<usize> = None;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let cols: Vec<&str> = line.split(',').map(str::trim).collect();
            if !header_seen {
                header_seen = true;
                if line.starts_with("model,") {
                    width = Some(if cols.len() == 6 { 6 } else { 8 });
                    continue;
                }
            }
            let width = *width.get_or_insert(if cols.len() == 6 { 6 } else { 8 });
            if cols.len() != width {
                let header = if width == 6 { OLD_HEADER } else { HEADER };
                return Err(bad(
                    i + 1,
                    format!("expected {width} columns ({header}), found {}", cols.len()),
                ));
            }
            let num = |k: usize, name: &str| -> Result<f64, PricingError> {
                cols[k]
                    .parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite() && *v >= 0.0)
                    .ok_or_else(|| bad(i + 1, format!("{name} `{}` is not a price", cols[k])))
            };
            // An empty cache cell: the table has no such price for the model.
            let optional = |k: usize, name: &str| -> Result<Option<f64>, PricingError> {
                if width == 6 || cols[k].is_empty() {
                    Ok(None)
                } else {
                    num(k, name).map(Some)
                }
            };
            if cols[0].is_empty() {
                return Err(bad(i + 1, "the model name is empty".into()));
            }
            // Two rows for one model: which price holds would be a silent
            // choice of row order.
            if let Some(first) = prices.iter().position(|p: &Price| p.model == cols[0]) {
                return Err(bad(
                    i + 1,
                    format!(
                        "model `{}` is priced twice (also on line {}); keep one row",
                        cols[0], lines[first]
                    ),
                ));
            }
            lines.push(i + 1);
            prices.push(Price {
                model: cols[0].to_string(),
                input_per_1m: num(1, "input_per_1m")?,
                output_per_1m: num(2, "output_per_1m")?,
                batch_input_per_1m: num(3, "batch_input_per_1m")?,
                batch_output_per_1m: num(4, "batch_output_per_1m")?,
                cached_input_per_1m: optional(5, "cached_input_per_1m")?,
                cache_write_per_1m: optional(6, "cache_write_per_1m")?,
                prices_as_of: cols[width - 1].to_string(),
            });
        }
        // An empty table is a broken file (cut short, the wrong file), not
        // a wish for no estimates: every model would go unpriced quietly.
        if prices.is_empty() {
            return Err(bad(
                text.lines().count().max(1),
                format!(
                    "the price table has no price rows; expected the header {HEADER} and one row per model"
                ),
            ));
        }
        let mut warnings = Vec::new();
        if width == Some(6) {
            warnings.push(format!(
                "price table {source_name} has no cached_input_per_1m and cache_write_per_1m columns \
                 (a table from before prompt caching was priced): prompt-cache reads and writes are \
                 priced as plain input, so costs of cached tokens are over-stated; add the columns \
                 (header {HEADER}) from the providers' pricing pages"
            ));
        }
        Ok(PriceTable {
            source_name: source_name.to_string(),
            prices,
            warnings,
        })
    }

    /// The price whose model name is the longest prefix of `model` that ends
    /// at a `-` boundary: `gpt-4o-mini-2024-07-18` finds `gpt-4o-mini`, but
    /// `gpt-5.3-codex` does not borrow `gpt-5`'s price (it has none).
    pub fn lookup(&self, model: &str) -> Option<&Price> {
        self.prices
            .iter()
            .filter(|p| {
                model
                    .strip_prefix(p.model.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('-'))
            })
            .max_by_key(|p| p.model.len())
    }
}

/// The cost range (README.md, "Tokens and cost"), in USD at batch prices.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// Prompt tokens only.
    pub low: f64,
    /// Plus `expected_output_tokens` per request, when the spec gives it.
    pub expected: Option<f64>,
    /// Plus `max_tokens` per request, when the request caps output.
    pub high: Option<f64>,
    /// The prompt's cost if the cache is hit as it can be, when the
    /// requests ask for caching ([`with_cache_hits`]). `low`, `expected`
    /// and `high` assume no hit: a provider's cache is best effort.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached: Option<CachedEstimate>,
}

/// The prompt's cost with cache hits: every request but the first of each
/// batch reads the shared prefix from the cache, and (where the provider
/// bills writes) the first writes it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CachedEstimate {
    /// The shared prefix of each request (system prompt and examples).
    pub prefix_tokens: u64,
    /// Prompt tokens read from the cache, over the plan.
    pub read_tokens: u64,
    /// Prompt tokens written to the cache, over the plan.
    pub write_tokens: u64,
    /// `low` with those tokens at the cache prices.
    pub low: f64,
}

/// [`CachedEstimate`] of `requests` requests in `batches` batches holding
/// `prompt_tokens` in all, with a shared prefix of `prefix_tokens`.
/// `block`: the provider caches in blocks of this many tokens (OpenAI: 128,
/// prompt caching guide), 1 for a whole block (Anthropic); `writes`: the
/// provider bills writes apart (Anthropic).
pub fn with_cache_hits(
    price: &Price,
    requests: u64,
    batches: u64,
    prompt_tokens: u64,
    prefix_tokens: u64,
    block: u64,
    writes: bool,
) -> CachedEstimate {
    let firsts = batches.min(requests);
    let cached = prefix_tokens / block.max(1) * block.max(1);
    let read_tokens = (requests - firsts) * cached;
    let write_tokens = if writes { firsts * prefix_tokens } else { 0 };
    let plain = prompt_tokens.saturating_sub(read_tokens + write_tokens);
    CachedEstimate {
        prefix_tokens,
        read_tokens,
        write_tokens,
        low: plain as f64 * price.batch_input_per_1m / 1e6
            + cache_cost(price, write_tokens, read_tokens, true),
    }
}

/// Estimate the cost of `requests` requests holding `prompt_tokens` in all.
pub fn estimate(
    price: &Price,
    requests: u64,
    prompt_tokens: u64,
    expected_output_per_request: Option<u64>,
    max_output_per_request: Option<u64>,
) -> Estimate {
    let input = prompt_tokens as f64 * price.batch_input_per_1m / 1e6;
    let output = |per: u64| (requests * per) as f64 * price.batch_output_per_1m / 1e6;
    Estimate {
        low: input,
        expected: expected_output_per_request.map(|e| input + output(e)),
        high: max_output_per_request.map(|m| input + output(m)),
        cached: None,
    }
}

/// Cost of tokens actually used, at batch prices.
pub fn actual(price: &Price, input_tokens: u64, output_tokens: u64) -> f64 {
    (input_tokens as f64 * price.batch_input_per_1m
        + output_tokens as f64 * price.batch_output_per_1m)
        / 1e6
}

/// What prompt-cache writes and reads cost, at batch prices (`batch`) or
/// standard ones, from the table's cache columns. Both are billed apart
/// from plain input: Anthropic's `input_tokens` leave them out (Messages
/// API, `usage`), and OpenAI's `cached_tokens` are taken out of the input
/// when the usage is read (`provider::openai::lines`).
pub fn cache_cost(price: &Price, write: u64, read: u64, batch: bool) -> f64 {
    (write as f64 * price.cache_write_per_1m(batch) + read as f64 * price.cache_read_per_1m(batch))
        / 1e6
}

/// What the prompt cache saved: the same tokens as plain input, less what
/// they cost as cache writes and reads. Negative when writes (which cost
/// more than input on Anthropic) were not paid back by reads.
pub fn cache_saving(price: &Price, write: u64, read: u64, batch: bool) -> f64 {
    (write + read) as f64 * price.input(batch) / 1e6 - cache_cost(price, write, read, batch)
}

/// `actual` with prompt-cache writes and reads priced in.
pub fn actual_cached(price: &Price, input: u64, output: u64, write: u64, read: u64) -> f64 {
    actual(price, input, output) + cache_cost(price, write, read, true)
}

/// `standard` with prompt-cache writes and reads priced in.
pub fn standard_cached(price: &Price, input: u64, output: u64, write: u64, read: u64) -> f64 {
    standard(price, input, output) + cache_cost(price, write, read, false)
}

/// What the same tokens cost at standard (non-batch) prices, for the receipt.
pub fn standard(price: &Price, input_tokens: u64, output_tokens: u64) -> f64 {
    (input_tokens as f64 * price.input_per_1m + output_tokens as f64 * price.output_per_1m) / 1e6
}

/// Render USD for people: `$0.0123` below a dollar, `$12.34` above.
pub fn usd(v: f64) -> String {
    // A sum of nothing is -0.0 in Rust, and a rounding error may be a hair
    // under zero: neither is a refund, so both print as $0.0000.
    let v = if v.abs() < 0.000_05 { 0.0 } else { v };
    if v < 1.0 {
        format!("${v:.4}")
    } else {
        format!("${v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "# comment
model,input_per_1m,output_per_1m,batch_input_per_1m,batch_output_per_1m,prices_as_of
gpt-4o,2.50,10.00,1.25,5.00,2026-01-01
gpt-4o-mini,0.15,0.60,0.075,0.30,2026-01-01
gpt-4,30,60,15,30,2026-01-01
";

    #[test]
    fn longest_prefix_wins() {
        let t = PriceTable::parse("t", TABLE).unwrap();
        let cases = [
            ("gpt-4o-mini-2024-07-18", Some("gpt-4o-mini")),
            ("gpt-4o-mini", Some("gpt-4o-mini")),
            ("gpt-4o-2024-08-06", Some("gpt-4o")),
            ("gpt-4-turbo", Some("gpt-4")),
            ("gpt-4", Some("gpt-4")),
            ("claude-x", None),
            ("gpt-4.1", None),
            ("gpt-4omni", None),
            ("gpt", None),
        ];
        for (model, want) in cases {
            assert_eq!(t.lookup(model).map(|p| p.model.as_str()), want, "{model}");
        }
    }

    #[test]
    fn estimate_arithmetic() {
        let t = PriceTable::parse("t", TABLE).unwrap();
        let p = t.lookup("gpt-4o-mini").unwrap();
        // 1,000 requests, 2M prompt tokens: 2 × 0.075 = $0.15 low.
        let e = estimate(p, 1000, 2_000_000, Some(10), Some(16));
        assert!((e.low - 0.15).abs() < 1e-12);
        // + 10,000 output tokens × $0.30/1M = $0.003.
        assert!((e.expected.unwrap() - 0.153).abs() < 1e-12);
        // + 16,000 × $0.30/1M = $0.0048.
        assert!((e.high.unwrap() - 0.1548).abs() < 1e-12);
        let e = estimate(p, 1000, 2_000_000, None, None);
        assert_eq!((e.expected, e.high), (None, None));
        assert!((actual(p, 1_000_000, 1_000_000) - 0.375).abs() < 1e-12);
    }

    #[test]
    fn bad_rows_are_placed() {
        let err = PriceTable::parse("p.csv", "model,a,b,c,d,e\nx,1,2,3\n").unwrap_err();
        assert!(err.to_string().starts_with("p.csv:2:"), "{err}");
        let err = PriceTable::parse("p.csv", "x,1,two,3,4,2026-01-01\n").unwrap_err();
        assert!(err.to_string().contains("output_per_1m `two`"), "{err}");
    }

    #[test]
    fn broken_tables_are_refused_at_their_line() {
        let header = "model,input_per_1m,output_per_1m,batch_input_per_1m,batch_output_per_1m,prices_as_of\n";
        let cases = [
            (String::new(), "p.csv:1:", "no price rows"),
            (
                "# only a comment\n".to_string(),
                "p.csv:1:",
                "no price rows",
            ),
            (header.to_string(), "p.csv:1:", "no price rows"),
            (
                format!("{header}m,1,2,3,4,d\nn,1,2,3,4,d\nm,1,2,3,4,d\n"),
                "p.csv:4:",
                "`m` is priced twice (also on line 2)",
            ),
            (
                format!("{header},1,2,3,4,d\n"),
                "p.csv:2:",
                "model name is empty",
            ),
        ];
        for (text, place, words) in cases {
            let err = PriceTable::parse("p.csv", &text).unwrap_err().to_string();
            assert!(
                err.starts_with(place) && err.contains(words),
                "{text:?}: {err}"
            );
        }
    }

    #[test]
    fn shipped_table_parses_and_prices_common_models() {
        let t = PriceTable::parse("built-in", BUILTIN_PRICING).unwrap();
        for m in [
            "gpt-4o-mini",
            "gpt-4.1",
            "gpt-5",
            "claude-sonnet-4-5",
            "simulated",
        ] {
            let p = t.lookup(m).unwrap_or_else(|| panic!("{m} has no price"));
            assert!(p.batch_input_per_1m <= p.input_per_1m, "{m}");
        }
    }

    const CACHED: &str = "model,input_per_1m,output_per_1m,batch_input_per_1m,batch_output_per_1m,cached_input_per_1m,cache_write_per_1m,prices_as_of
claude-x,3.00,15.00,1.50,7.50,0.30,6.00,2026-01-01
gpt-x,2.00,8.00,1.00,4.00,0.50,,2026-01-02
";

    #[test]
    fn an_old_table_loads_with_a_warning_and_prices_the_cache_as_input() {
        let old = PriceTable::parse("old.csv", TABLE).unwrap();
        assert_eq!(old.warnings.len(), 1);
        assert!(
            old.warnings[0].contains("old.csv") && old.warnings[0].contains("cached_input_per_1m"),
            "{:?}",
            old.warnings
        );
        let p = old.lookup("gpt-4o").unwrap();
        assert_eq!((p.cached_input_per_1m, p.cache_write_per_1m), (None, None));
        assert_eq!(
            (p.cache_read_per_1m(true), p.cache_write_per_1m(true)),
            (1.25, 1.25)
        );
        assert_eq!(cache_saving(p, 1000, 5000, true), 0.0);
        let new = PriceTable::parse("new.csv", CACHED).unwrap();
        assert!(new.warnings.is_empty(), "{:?}", new.warnings);
        assert_eq!(new.lookup("gpt-x").unwrap().prices_as_of, "2026-01-02");
    }

    #[test]
    fn a_table_of_mixed_widths_is_refused_at_the_row() {
        let text = format!("{CACHED}gpt-y,1,2,3,4,2026-01-01\n");
        let err = PriceTable::parse("p.csv", &text).unwrap_err().to_string();
        assert!(
            err.starts_with("p.csv:4:") && err.contains("expected 8 columns"),
            "{err}"
        );
        let err = PriceTable::parse("p.csv", "m,1,2,1,1,0.1,x,d\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cache_write_per_1m `x`"), "{err}");
    }

    #[test]
    fn cache_prices_by_lane() {
        let t = PriceTable::parse("t", CACHED).unwrap();
        let claude = t.lookup("claude-x").unwrap();
        let gpt = t.lookup("gpt-x").unwrap();
        // (price, batch, read per 1M, write per 1M): the batch price is the
        // column at the model's batch discount; an empty write is input.
        let cases = [
            (claude, false, 0.30, 6.00),
            (claude, true, 0.15, 3.00),
            (gpt, false, 0.50, 2.00),
            (gpt, true, 0.25, 1.00),
        ];
        for (p, batch, read, write) in cases {
            let got = (p.cache_read_per_1m(batch), p.cache_write_per_1m(batch));
            assert!(
                (got.0 - read).abs() < 1e-12 && (got.1 - write).abs() < 1e-12,
                "{} batch={batch}: {got:?}",
                p.model
            );
        }
        // Direct mode's price is the standard one in the batch fields.
        let direct = claude.clone().at_standard_prices();
        assert!((direct.cache_read_per_1m(true) - 0.30).abs() < 1e-12);
    }

    #[test]
    fn the_estimate_with_cache_hits() {
        let t = PriceTable::parse("t", CACHED).unwrap();
        let (claude, gpt) = (t.lookup("claude-x").unwrap(), t.lookup("gpt-x").unwrap());
        // 1,000 requests in 2 batches, 2,000-token prefix, 2,100,000 tokens.
        // OpenAI: 998 requests read 1,920 tokens (15 blocks of 128); the
        // rest is plain: 2,100,000 - 1,916,160 = 183,840 at $1.00, the
        // reads at $0.25 per 1M.
        let e = with_cache_hits(gpt, 1000, 2, 2_100_000, 2000, 128, false);
        assert_eq!((e.read_tokens, e.write_tokens), (1_916_160, 0));
        assert!((e.low - (0.18384 + 0.47904)).abs() < 1e-12, "{e:?}");
        // Anthropic: 998 reads of 2,000, 2 writes of 2,000; plain 100,000
        // at $1.50, reads at $0.15, writes at $3.00 per 1M.
        let e = with_cache_hits(claude, 1000, 2, 2_100_000, 2000, 1, true);
        assert_eq!((e.read_tokens, e.write_tokens), (1_996_000, 4_000));
        assert!((e.low - (0.15 + 0.2994 + 0.012)).abs() < 1e-12, "{e:?}");
        // No request, no hit; never more tokens cached than there are.
        let e = with_cache_hits(gpt, 0, 0, 0, 2000, 128, false);
        assert_eq!((e.read_tokens, e.write_tokens, e.low), (0, 0, 0.0));
    }

    #[test]
    fn cache_cost_and_saving() {
        let t = PriceTable::parse("t", CACHED).unwrap();
        let claude = t.lookup("claude-x").unwrap();
        // 1M reads at batch prices: $0.15, against $1.50 as input.
        assert!((cache_cost(claude, 0, 1_000_000, true) - 0.15).abs() < 1e-12);
        assert!((cache_saving(claude, 0, 1_000_000, true) - 1.35).abs() < 1e-12);
        // One write and nothing read back costs more than input: a loss.
        assert!((cache_saving(claude, 1_000_000, 0, true) + 1.50).abs() < 1e-12);
        // 100k input, 10k output, 2k written, 50k read, standard prices:
        // 0.3 + 0.15 + 0.012 + 0.015.
        let got = standard_cached(claude, 100_000, 10_000, 2_000, 50_000);
        assert!((got - 0.477).abs() < 1e-12, "{got}");
    }

    #[test]
    fn usd_rendering() {
        assert_eq!(usd(0.01234), "$0.0123");
        assert_eq!(usd(12.345), "$12.35");
        // No negative zero: an empty sum, or a rounding error under zero.
        assert_eq!(usd([0.0f64; 0].iter().sum()), "$0.0000");
        assert_eq!(usd(-0.0), "$0.0000");
        assert_eq!(usd(-0.000_001), "$0.0000");
    }
}
