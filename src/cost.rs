//! Prices and cost arithmetic. The price table is `config/pricing.csv`
//! (USD per 1M tokens, standard and batch); a model is priced by the longest
//! table entry that prefixes its name, so dated snapshots such as
//! `gpt-4o-mini-2024-07-18` find `gpt-4o-mini`.

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
}

impl Price {
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
}

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
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if !header_seen {
                header_seen = true;
                if line.starts_with("model,") {
                    continue;
                }
            }
            let cols: Vec<&str> = line.split(',').map(str::trim).collect();
            if cols.len() != 6 {
                return Err(bad(
                    i + 1,
                    format!(
                        "expected 6 columns (model,input_per_1m,output_per_1m,batch_input_per_1m,batch_output_per_1m,prices_as_of), found {}",
                        cols.len()
                    ),
                ));
            }
            let num = |k: usize, name: &str| -> Result<f64, PricingError> {
                cols[k]
                    .parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite() && *v >= 0.0)
                    .ok_or_else(|| bad(i + 1, format!("{name} `{}` is not a price", cols[k])))
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
                prices_as_of: cols[5].to_string(),
            });
        }
        // An empty table is a broken file (cut short, the wrong file), not
        // a wish for no estimates: every model would go unpriced quietly.
        if prices.is_empty() {
            return Err(bad(
                text.lines().count().max(1),
                "the price table has no price rows; expected the header model,input_per_1m,output_per_1m,batch_input_per_1m,batch_output_per_1m,prices_as_of and one row per model".into(),
            ));
        }
        Ok(PriceTable {
            source_name: source_name.to_string(),
            prices,
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
    }
}

/// Cost of tokens actually used, at batch prices.
pub fn actual(price: &Price, input_tokens: u64, output_tokens: u64) -> f64 {
    (input_tokens as f64 * price.batch_input_per_1m
        + output_tokens as f64 * price.batch_output_per_1m)
        / 1e6
}

/// Prompt-cache tokens as input tokens at the base price: a cache write
/// costs 1.25 times an input token (the 5-minute cache) and a read 0.1
/// times (Anthropic's pricing page, "Prompt caching"); the batch discount
/// applies to both.
pub fn cache_as_input(write_tokens: u64, read_tokens: u64) -> f64 {
    write_tokens as f64 * 1.25 + read_tokens as f64 * 0.1
}

/// `actual` with prompt-cache writes and reads priced in.
pub fn actual_cached(price: &Price, input: u64, output: u64, write: u64, read: u64) -> f64 {
    actual(price, input, output) + cache_as_input(write, read) * price.batch_input_per_1m / 1e6
}

/// `standard` with prompt-cache writes and reads priced in.
pub fn standard_cached(price: &Price, input: u64, output: u64, write: u64, read: u64) -> f64 {
    standard(price, input, output) + cache_as_input(write, read) * price.input_per_1m / 1e6
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
