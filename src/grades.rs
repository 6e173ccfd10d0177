//! What the grades look like: for each property of `output.schema`, a
//! distribution (numbers) or counts (enums, booleans), and for the whole job
//! the parse failures by reason. Pure; fed one row at a time by the output
//! writer (the summary) and by `report`, so memory does not grow with rows.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

/// Above this many distinct values of one numeric property, values are
/// rounded to 4 significant digits, so memory stays bounded on any input;
/// quartiles are then within 0.05% of the exact ones (and `approximate`).
const MAX_DISTINCT: usize = 50_000;

/// The statistics of one graded property.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PropertyStats {
    pub name: String,
    #[serde(flatten)]
    pub stats: Stats,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Stats {
    /// `integer` and `number` properties.
    Numeric(Numeric),
    /// `enum` and `boolean` properties: how often each value occurs, in the
    /// schema's order.
    Counts { counts: Vec<(String, u64)> },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Numeric {
    /// Rows with a value (null is no value).
    pub count: u64,
    pub min: f64,
    pub q1: f64,
    pub median: f64,
    pub q3: f64,
    pub max: f64,
    pub mean: f64,
    pub histogram: Vec<Bin>,
    /// Values were rounded to bound memory (very many distinct values).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub approximate: bool,
}

/// One bar: values in `[lo, hi)` (the last bar includes `hi`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bin {
    pub lo: f64,
    pub hi: f64,
    pub count: u64,
}

/// One failed row, to show what a failure looks like.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct FailureExample {
    /// The row's number in the input (1-based).
    pub row: u64,
    /// The row's id (`input.id`), or its number.
    pub key: String,
    /// The answer as the model wrote it, cut to 200 characters (empty for
    /// API failures, which have no answer).
    pub raw: String,
    /// Why the row failed.
    pub error: String,
}

/// A failure class (`api: 400 invalid_request`, `parse: not a label`), how
/// many rows it holds, and its first few rows.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct FailureClass {
    /// `api` (a final error from the provider) or `parse` (an answer that
    /// did not parse).
    pub kind: String,
    /// The error code, or the parse failure's reason.
    pub class: String,
    pub rows: u64,
    /// Up to three rows of this class, in input order.
    pub examples: Vec<FailureExample>,
}

/// The properties worth a chart, and how to count them, from the schema.
#[derive(Debug, Clone)]
enum Kind {
    Numeric,
    Counts(Vec<String>),
}

fn kind_of(schema: &Value) -> Option<Kind> {
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        return Some(Kind::Counts(
            values.iter().filter(|v| !v.is_null()).map(label).collect(),
        ));
    }
    if types.contains(&"boolean") {
        return Some(Kind::Counts(vec!["true".into(), "false".into()]));
    }
    if types.iter().any(|t| *t == "integer" || *t == "number") {
        return Some(Kind::Numeric);
    }
    None
}

fn label(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A total order on f64 for the value counts.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Key(f64);
impl Eq for Key {}
impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Key {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

#[derive(Debug, Clone)]
enum Acc {
    Numeric {
        values: BTreeMap<Key, u64>,
        sum: f64,
        rounded: bool,
    },
    Counts(Vec<(String, u64)>),
}

/// Adds up rows, one at a time.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    props: Vec<(String, Acc)>,
    failures: BTreeMap<String, u64>,
}

impl Tally {
    /// A tally for answers of `schema` (`None`: only failures are counted).
    pub fn new(schema: Option<&Value>) -> Tally {
        let mut props = Vec::new();
        if let Some(p) = schema
            .and_then(|s| s.get("properties"))
            .and_then(Value::as_object)
        {
            for (name, sub) in p {
                let acc = match kind_of(sub) {
                    Some(Kind::Numeric) => Acc::Numeric {
                        values: BTreeMap::new(),
                        sum: 0.0,
                        rounded: false,
                    },
                    Some(Kind::Counts(values)) => {
                        Acc::Counts(values.into_iter().map(|v| (v, 0)).collect())
                    }
                    None => continue,
                };
                props.push((name.clone(), acc));
            }
        }
        Tally {
            props,
            failures: BTreeMap::new(),
        }
    }

    /// A parsed answer.
    pub fn add(&mut self, answer: &Value) {
        for (name, acc) in &mut self.props {
            let Some(v) = answer.get(name.as_str()) else {
                continue;
            };
            match acc {
                Acc::Numeric {
                    values,
                    sum,
                    rounded,
                } => {
                    let Some(x) = v.as_f64() else { continue };
                    let x = if *rounded { round4(x) } else { x };
                    *sum += v.as_f64().unwrap_or(x);
                    *values.entry(Key(x)).or_default() += 1;
                    if values.len() > MAX_DISTINCT && !*rounded {
                        *rounded = true;
                        let old = std::mem::take(values);
                        for (k, n) in old {
                            *values.entry(Key(round4(k.0))).or_default() += n;
                        }
                    }
                }
                Acc::Counts(counts) => {
                    if v.is_null() {
                        continue;
                    }
                    let l = label(v);
                    match counts.iter_mut().find(|(c, _)| *c == l) {
                        Some((_, n)) => *n += 1,
                        None => counts.push((l, 1)),
                    }
                }
            }
        }
    }

    /// A parse failure of this class (`not JSON`, `maximum at /accuracy`).
    pub fn fail(&mut self, class: &str) {
        *self.failures.entry(class.to_string()).or_default() += 1;
    }

    /// Each property's statistics (properties with no value are left out).
    pub fn properties(&self) -> Vec<PropertyStats> {
        self.props
            .iter()
            .filter_map(|(name, acc)| {
                let stats = match acc {
                    Acc::Numeric {
                        values,
                        sum,
                        rounded,
                    } => Stats::Numeric(numeric(values, *sum, *rounded)?),
                    Acc::Counts(c) => Stats::Counts { counts: c.clone() },
                };
                Some(PropertyStats {
                    name: name.clone(),
                    stats,
                })
            })
            .collect()
    }

    /// Parse failures by reason, most frequent first.
    pub fn failures(&self) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> =
            self.failures.iter().map(|(k, n)| (k.clone(), *n)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v
    }
}

fn round4(x: f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let digits = 4 - 1 - x.abs().log10().floor() as i32;
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

fn numeric(values: &BTreeMap<Key, u64>, sum: f64, approximate: bool) -> Option<Numeric> {
    let count: u64 = values.values().sum();
    if count == 0 {
        return None;
    }
    let min = values.keys().next()?.0;
    let max = values.keys().next_back()?.0;
    Some(Numeric {
        count,
        min,
        q1: quantile(values, count, 0.25),
        median: quantile(values, count, 0.5),
        q3: quantile(values, count, 0.75),
        max,
        mean: sum / count as f64,
        histogram: histogram(values, min, max),
        approximate,
    })
}

/// The `rank`-th value (0-based) in sorted order.
fn nth(values: &BTreeMap<Key, u64>, rank: u64) -> f64 {
    let mut seen = 0;
    for (k, n) in values {
        seen += n;
        if rank < seen {
            return k.0;
        }
    }
    values.keys().next_back().map_or(0.0, |k| k.0)
}

/// Linear interpolation between order statistics (the usual default of
/// numpy and R's type 7).
fn quantile(values: &BTreeMap<Key, u64>, count: u64, q: f64) -> f64 {
    let pos = q * (count - 1) as f64;
    let lo = pos.floor() as u64;
    let hi = pos.ceil() as u64;
    let a = nth(values, lo);
    if hi == lo {
        return a;
    }
    let b = nth(values, hi);
    a + (b - a) * (pos - lo as f64)
}

/// One bar per value for small integer scales (a 0-5 rubric gets six bars),
/// else ten bars of equal width.
fn histogram(values: &BTreeMap<Key, u64>, min: f64, max: f64) -> Vec<Bin> {
    let integers = values.keys().all(|k| k.0.fract() == 0.0);
    if integers && max - min <= 20.0 {
        let mut bins: Vec<Bin> = (0..=(max - min) as i64)
            .map(|i| Bin {
                lo: min + i as f64,
                hi: min + i as f64 + 1.0,
                count: 0,
            })
            .collect();
        for (k, n) in values {
            bins[(k.0 - min) as usize].count += n;
        }
        return bins;
    }
    const BARS: usize = 10;
    let width = (max - min) / BARS as f64;
    let mut bins: Vec<Bin> = (0..BARS)
        .map(|i| Bin {
            lo: min + width * i as f64,
            hi: if i + 1 == BARS {
                max
            } else {
                min + width * (i + 1) as f64
            },
            count: 0,
        })
        .collect();
    for (k, n) in values {
        let i = if width > 0.0 {
            (((k.0 - min) / width) as usize).min(BARS - 1)
        } else {
            0
        };
        bins[i].count += n;
    }
    bins
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "score": {"type": "integer"},
            "weight": {"type": ["number", "null"]},
            "verdict": {"enum": ["pass", "fail", null]},
            "ok": {"type": "boolean"},
            "reason": {"type": "string"}
        }})
    }

    #[test]
    fn distributions_and_counts() {
        let mut t = Tally::new(Some(&schema()));
        for (score, verdict, ok) in [
            (1, "pass", true),
            (2, "fail", false),
            (2, "pass", true),
            (5, "pass", true),
        ] {
            t.add(&json!({"score": score, "weight": null, "verdict": verdict, "ok": ok, "reason": "r"}));
        }
        t.fail("not JSON");
        t.fail("maximum at /score");
        t.fail("not JSON");
        let props = t.properties();
        let names: Vec<&str> = props.iter().map(|p| p.name.as_str()).collect();
        // `weight` had no value; `reason` is free text.
        assert_eq!(names, ["score", "verdict", "ok"]);
        let Stats::Numeric(n) = &props[0].stats else {
            panic!("{props:?}")
        };
        assert_eq!(
            (n.count, n.min, n.q1, n.median, n.q3, n.max, n.mean),
            (4, 1.0, 1.75, 2.0, 2.75, 5.0, 2.5)
        );
        let bars: Vec<(f64, u64)> = n.histogram.iter().map(|b| (b.lo, b.count)).collect();
        assert_eq!(bars, [(1.0, 1), (2.0, 2), (3.0, 0), (4.0, 0), (5.0, 1)]);
        assert_eq!(
            props[1].stats,
            Stats::Counts {
                counts: vec![("pass".into(), 3), ("fail".into(), 1)]
            }
        );
        assert_eq!(
            props[2].stats,
            Stats::Counts {
                counts: vec![("true".into(), 3), ("false".into(), 1)]
            }
        );
        assert_eq!(
            t.failures(),
            [
                ("not JSON".to_string(), 2),
                ("maximum at /score".to_string(), 1)
            ]
        );
    }

    #[test]
    fn wide_ranges_get_ten_bars() {
        let mut t = Tally::new(Some(&json!({"properties": {"x": {"type": "number"}}})));
        for i in 0..=100 {
            t.add(&json!({"x": i as f64 / 2.0}));
        }
        let Stats::Numeric(n) = &t.properties()[0].stats else {
            panic!()
        };
        assert_eq!(n.histogram.len(), 10);
        assert_eq!(n.histogram.iter().map(|b| b.count).sum::<u64>(), 101);
        assert_eq!(n.histogram[9].hi, 50.0);
        assert_eq!((n.min, n.median, n.max), (0.0, 25.0, 50.0));
    }

    #[test]
    fn many_distinct_values_stay_bounded() {
        let mut t = Tally::new(Some(&json!({"properties": {"x": {"type": "number"}}})));
        for i in 0..(MAX_DISTINCT as u64 + 10) {
            t.add(&json!({"x": 1.0 + i as f64 * 1e-7}));
        }
        let Stats::Numeric(n) = &t.properties()[0].stats else {
            panic!()
        };
        assert!(n.approximate);
        assert_eq!(n.count, MAX_DISTINCT as u64 + 10);
        assert!((n.median - 1.0025).abs() < 0.001, "{}", n.median);
        assert_eq!(round4(123456.0), 123500.0);
        assert_eq!(round4(-0.0012345), -0.001235);
    }
}
