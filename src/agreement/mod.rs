//! Does the judge agree with the user's gold values? `metrics` holds the
//! pure formulas; this module turns a job's rows into them, per graded
//! field or schema property, and keeps examples of the disagreements.

pub mod metrics;
pub mod text;

use serde::{Deserialize, Serialize};

pub use metrics::{Binary, Categorical, ClassStats, Confusion, Interval, Ordinal};

/// How a field's values compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Labels, enums, booleans, regex captures, text (exact after trimming).
    Categorical,
    /// Numbers.
    Ordinal,
}

/// A gold value that is not among the field's classes (a typo in the gold
/// file), with how many rows hold it. Such rows are left out of the metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnknownGold {
    pub value: String,
    pub rows: u64,
}

/// One row where the judge and the gold value differ.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Disagreement {
    /// The row's number in the input (1-based, as the output's order).
    pub row: u64,
    /// The row's id (`input.id`), or its number.
    pub key: String,
    pub gold: String,
    pub judge: String,
    /// The answer as the model wrote it, cut to 200 characters.
    pub raw: String,
}

/// Agreement of one graded field (or schema property) with its gold column.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldAgreement {
    /// `answer`, or `answer.category` for a schema property.
    pub field: String,
    pub gold_column: String,
    pub kind: Kind,
    /// Rows with no gold value (an empty cell).
    pub missing_gold: u64,
    /// Rows with a gold value but no usable grade (failed, parse error, not graded).
    pub no_grade: u64,
    /// Gold values that are not among the field's classes, most frequent first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unknown_gold: Vec<UnknownGold>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub categorical: Option<Categorical>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary: Option<Binary>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub ordinal: Option<Ordinal>,
    /// What could not be computed, in words (κ with one class, no gold rows).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The first few disagreements per (gold, judge) pair.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disagreements: Vec<Disagreement>,
}

/// By hand: the kind's numbers are flattened into the object, and serde's
/// derive for two flattened options takes keys out for the first one it
/// tries, so the second never reads back. `kind` says which one it is.
impl<'de> Deserialize<'de> for FieldAgreement {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        #[derive(Deserialize)]
        struct Common {
            field: String,
            gold_column: String,
            kind: Kind,
            missing_gold: u64,
            no_grade: u64,
            #[serde(default)]
            unknown_gold: Vec<UnknownGold>,
            #[serde(default)]
            binary: Option<Binary>,
            #[serde(default)]
            notes: Vec<String>,
            #[serde(default)]
            disagreements: Vec<Disagreement>,
        }
        let v = Value::deserialize(d)?;
        let c: Common = serde_json::from_value(v.clone()).map_err(D::Error::custom)?;
        let (categorical, ordinal) = match c.kind {
            Kind::Categorical => (
                Some(serde_json::from_value(v).map_err(D::Error::custom)?),
                None,
            ),
            Kind::Ordinal => (
                None,
                Some(serde_json::from_value(v).map_err(D::Error::custom)?),
            ),
        };
        Ok(FieldAgreement {
            field: c.field,
            gold_column: c.gold_column,
            kind: c.kind,
            missing_gold: c.missing_gold,
            no_grade: c.no_grade,
            unknown_gold: c.unknown_gold,
            categorical,
            binary: c.binary,
            ordinal,
            notes: c.notes,
            disagreements: c.disagreements,
        })
    }
}

impl FieldAgreement {
    /// Rows compared (gold and grade both present and known).
    pub fn n(&self) -> u64 {
        match (&self.categorical, &self.ordinal) {
            (Some(c), _) => c.n,
            (_, Some(o)) => o.n,
            _ => 0,
        }
    }
}

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use crate::spec::{GoldField, GoldKind};

/// Longest raw answer kept with an example.
pub const RAW_CUT: usize = 200;
/// Examples kept per (gold, judge) pair.
pub const EXAMPLES_PER_PAIR: usize = 3;
/// (gold, judge) pairs whose examples are kept, per field.
const MAX_PAIRS: usize = 50;

/// `s` cut to `max` characters, with `…` when cut.
pub fn cut(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some((i, _)) => format!("{}…", &s[..i]),
    }
}

/// A row's gold cells in `fields` order: trimmed, `None` when empty or absent.
pub fn gold_cells(fields: &[GoldField], row: &crate::input::Row) -> Vec<Option<String>> {
    fields
        .iter()
        .map(|f| {
            row.get(&f.column)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        })
        .collect()
}

/// A usable grade: the parsed value, and the parsed JSON for object answers.
#[derive(Debug, Clone, Copy)]
pub struct Grade<'a> {
    pub text: &'a str,
    pub json: Option<&'a Value>,
}

/// The judge's value of one field, as text; `None` when it has none
/// (a schema property that is null or missing).
fn judge_value(field: &GoldField, grade: Grade) -> Option<String> {
    let v = match (&field.property, grade.json) {
        (Some(p), Some(json)) => match json.get(p)? {
            Value::Null => return None,
            Value::String(s) => s.trim().to_string(),
            other => other.to_string(),
        },
        (Some(_), None) => return None,
        (None, _) => grade.text.trim().to_string(),
    };
    match field.kind {
        GoldKind::Number { .. } => number(&v),
        _ => Some(v),
    }
}

/// The gold value in the field's terms, or `None` when it is not among the
/// field's classes (or not a number).
fn canonical_gold(kind: &GoldKind, gold: &str) -> Option<String> {
    match kind {
        GoldKind::Classes(classes) => classes
            .iter()
            .find(|c| c.as_str() == gold)
            .or_else(|| {
                let mut like = classes.iter().filter(|c| c.eq_ignore_ascii_case(gold));
                match (like.next(), like.next()) {
                    (Some(one), None) => Some(one),
                    _ => None,
                }
            })
            .cloned(),
        GoldKind::Boolean => match gold.to_ascii_lowercase().as_str() {
            "true" | "yes" | "y" | "t" | "1" => Some("true".into()),
            "false" | "no" | "n" | "f" | "0" => Some("false".into()),
            _ => None,
        },
        GoldKind::Text => Some(gold.to_string()),
        GoldKind::Number { .. } => number(gold),
    }
}

/// A number in one spelling (`3`, not `3.0`), so that equal values compare
/// equal as text too; `None` when it is not a finite number.
fn number(s: &str) -> Option<String> {
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|x| x.is_finite())
        .map(|x| format!("{x}"))
}

/// The class counted as positive for a two-class field.
fn positive_class(kind: &GoldKind) -> Option<&str> {
    match kind {
        GoldKind::Boolean => Some("true"),
        GoldKind::Classes(c) if c.len() == 2 => Some(c[0].as_str()),
        _ => None,
    }
}

fn class_order(kind: &GoldKind) -> Vec<String> {
    match kind {
        GoldKind::Classes(c) => c.clone(),
        GoldKind::Boolean => vec!["true".into(), "false".into()],
        _ => Vec::new(),
    }
}

/// Everything one field needs, added up one row at a time.
#[derive(Debug, Clone)]
struct FieldAcc {
    field: GoldField,
    missing_gold: u64,
    no_grade: u64,
    unknown: BTreeMap<String, u64>,
    /// Categorical values, interned: pairs hold ids into `names`.
    names: Vec<String>,
    ids: HashMap<String, u32>,
    classes: Vec<(u32, u32)>,
    numbers: Vec<(f64, f64)>,
    /// Judge answers over rows without gold: (positives, all), for a
    /// two-class field's corrected rate.
    unlabelled: (u64, u64),
    examples: BTreeMap<(String, String), Vec<Disagreement>>,
}

impl FieldAcc {
    fn intern(&mut self, v: String) -> u32 {
        if let Some(&id) = self.ids.get(&v) {
            return id;
        }
        let id = self.names.len() as u32;
        self.ids.insert(v.clone(), id);
        self.names.push(v);
        id
    }

    fn add(
        &mut self,
        row: u64,
        key: &str,
        gold: Option<&str>,
        grade: Option<Grade>,
        raw: &str,
    ) -> Option<bool> {
        let judge = grade.and_then(|g| judge_value(&self.field, g));
        let Some(gold) = gold else {
            self.missing_gold += 1;
            if let (Some(j), Some(pos)) = (&judge, positive_class(&self.field.kind)) {
                self.unlabelled.1 += 1;
                if canonical_gold(&self.field.kind, j).as_deref() == Some(pos) {
                    self.unlabelled.0 += 1;
                }
            }
            return None;
        };
        let Some(gold) = canonical_gold(&self.field.kind, gold) else {
            *self.unknown.entry(gold.to_string()).or_default() += 1;
            return None;
        };
        let Some(judge) = judge else {
            self.no_grade += 1;
            return None;
        };
        let agrees = match self.field.kind {
            GoldKind::Number { .. } => {
                let (g, j) = (num(&gold), num(&judge));
                self.numbers.push((g, j));
                g == j
            }
            _ => {
                let (g, j) = (self.intern(gold.clone()), self.intern(judge.clone()));
                self.classes.push((g, j));
                g == j
            }
        };
        if !agrees {
            let pair = (gold, judge);
            let kept = self.examples.len();
            match self.examples.get_mut(&pair) {
                Some(v) if v.len() < EXAMPLES_PER_PAIR => v.push(example(row, key, &pair, raw)),
                Some(_) => {}
                None if kept < MAX_PAIRS => {
                    let first = example(row, key, &pair, raw);
                    self.examples.insert(pair, vec![first]);
                }
                None => {}
            }
        }
        Some(agrees)
    }

    fn pairs(&self) -> Vec<(&str, &str)> {
        self.classes
            .iter()
            .map(|&(g, j)| {
                (
                    self.names[g as usize].as_str(),
                    self.names[j as usize].as_str(),
                )
            })
            .collect()
    }

    fn finish(&self) -> FieldAgreement {
        let f = &self.field;
        let mut notes = Vec::new();
        let (kind, categorical, binary, ordinal) = match f.kind {
            GoldKind::Number { .. } => {
                let o = metrics::ordinal(&self.numbers);
                if o.n > 0 {
                    if o.weighted_kappa.is_none() {
                        notes.push(
                            "weighted κ is not given: it needs whole numbers on a scale of at most 1,000 values, and more than one value".to_string(),
                        );
                    }
                    if o.spearman.is_none() {
                        notes.push(
                            "Spearman's ρ is undefined: the gold values or the grades are all the same".to_string(),
                        );
                    }
                }
                (Kind::Ordinal, None, None, Some(o))
            }
            _ => {
                let pairs = self.pairs();
                let c = metrics::categorical(&pairs, &class_order(&f.kind));
                if c.n > 0 && c.kappa.is_none() {
                    notes.push(format!(
                        "Cohen's κ is undefined: gold and judge use one class only (`{}`), so agreement by chance is complete",
                        c.baseline_label
                    ));
                }
                let binary = positive_class(&f.kind)
                    .filter(|_| c.n > 0)
                    .map(|pos| metrics::binary(&pairs, pos, self.unlabelled));
                (Kind::Categorical, Some(c), binary, None)
            }
        };
        let n = categorical
            .as_ref()
            .map(|c| c.n)
            .or(ordinal.as_ref().map(|o| o.n))
            .unwrap_or(0);
        if n == 0 {
            notes.insert(
                0,
                format!(
                    "no row has both a gold value in `{}` and a usable grade, so nothing was compared",
                    f.column
                ),
            );
        }
        let mut unknown_gold: Vec<UnknownGold> = self
            .unknown
            .iter()
            .map(|(value, rows)| UnknownGold {
                value: value.clone(),
                rows: *rows,
            })
            .collect();
        unknown_gold.sort_by(|a, b| b.rows.cmp(&a.rows).then_with(|| a.value.cmp(&b.value)));
        if !unknown_gold.is_empty() {
            let rows: u64 = unknown_gold.iter().map(|u| u.rows).sum();
            notes.push(format!(
                "{rows} gold value{} in `{}` {} not {}, so {} left out: {}",
                if rows == 1 { "" } else { "s" },
                f.column,
                if rows == 1 { "is" } else { "are" },
                match f.kind {
                    GoldKind::Number { .. } => "a number".to_string(),
                    GoldKind::Boolean => "true or false".to_string(),
                    _ => "among the field's classes".to_string(),
                },
                if rows == 1 { "it is" } else { "they are" },
                unknown_gold
                    .iter()
                    .take(5)
                    .map(|u| format!(
                        "`{}` ({} row{})",
                        u.value,
                        u.rows,
                        if u.rows == 1 { "" } else { "s" }
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let mut pairs: Vec<(&(String, String), &Vec<Disagreement>)> =
            self.examples.iter().collect();
        let count = |p: &(String, String)| match (&categorical, &ordinal) {
            (Some(c), _) => cell(&c.confusion, &p.0, &p.1),
            (_, Some(o)) => o.confusion.as_ref().map_or(0, |t| cell(t, &p.0, &p.1)),
            _ => 0,
        };
        pairs.sort_by(|a, b| count(b.0).cmp(&count(a.0)).then_with(|| a.0.cmp(b.0)));
        FieldAgreement {
            field: f.field.clone(),
            gold_column: f.column.clone(),
            kind,
            missing_gold: self.missing_gold,
            no_grade: self.no_grade,
            unknown_gold,
            categorical,
            binary,
            ordinal,
            notes,
            disagreements: pairs
                .into_iter()
                .flat_map(|(_, v)| v.iter().cloned())
                .collect(),
        }
    }
}

fn num(s: &str) -> f64 {
    s.parse().unwrap_or(0.0)
}

/// The count of (gold, judge) in a table, 0 when either is not in it.
fn cell(t: &Confusion, gold: &str, judge: &str) -> u64 {
    let at = |v: &str| t.labels.iter().position(|l| l == v);
    match (at(gold), at(judge)) {
        (Some(g), Some(j)) => t.matrix[g][j],
        _ => 0,
    }
}

fn example(row: u64, key: &str, pair: &(String, String), raw: &str) -> Disagreement {
    Disagreement {
        row,
        key: key.to_string(),
        gold: pair.0.clone(),
        judge: pair.1.clone(),
        raw: cut(raw, RAW_CUT),
    }
}

/// What the quality gate (`halt.min_kappa`, `halt.min_accuracy`) says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "verdict", content = "message", rename_all = "snake_case")]
pub enum GateCheck {
    /// No gate, or too few gold rows graded yet to judge it.
    NotJudged(String),
    Passed(String),
    Failed(String),
}

impl GateCheck {
    pub fn failed(&self) -> bool {
        matches!(self, GateCheck::Failed(_))
    }
}

/// The quality gate's view of one field.
#[derive(Debug, Clone, PartialEq)]
pub struct GateNumbers {
    pub field: String,
    /// Rows compared.
    pub n: u64,
    pub accuracy: Option<f64>,
    pub kappa: Option<f64>,
    /// The lower end of κ's 95% interval (only when asked for).
    pub kappa_low: Option<f64>,
}

/// Adds up every gold field of a job, one row at a time.
#[derive(Debug, Clone)]
pub struct Collector {
    fields: Vec<FieldAcc>,
}

impl Collector {
    pub fn new(fields: &[GoldField]) -> Collector {
        Collector {
            fields: fields
                .iter()
                .map(|f| FieldAcc {
                    field: f.clone(),
                    missing_gold: 0,
                    no_grade: 0,
                    unknown: BTreeMap::new(),
                    names: Vec::new(),
                    ids: HashMap::new(),
                    classes: Vec::new(),
                    numbers: Vec::new(),
                    unlabelled: (0, 0),
                    examples: BTreeMap::new(),
                })
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// One row: its gold cells (in the fields' order), its grade when it
    /// has a usable one, and the raw answer. Returns, per field, whether
    /// judge and gold agree (`None`: nothing to compare).
    pub fn add(
        &mut self,
        row: u64,
        key: &str,
        gold: &[Option<String>],
        grade: Option<Grade>,
        raw: &str,
    ) -> Vec<Option<bool>> {
        self.fields
            .iter_mut()
            .enumerate()
            .map(|(i, f)| f.add(row, key, gold.get(i).and_then(|g| g.as_deref()), grade, raw))
            .collect()
    }

    /// The agreement of every field.
    pub fn finish(&self) -> Vec<FieldAgreement> {
        self.fields.iter().map(FieldAcc::finish).collect()
    }

    /// What the quality gate compares, cheaply: no bootstrap unless
    /// `lower_bound`.
    pub fn gate_numbers(&self, lower_bound: bool) -> Vec<GateNumbers> {
        self.fields
            .iter()
            .map(|f| {
                let (n, accuracy, kappa, kappa_low) = match f.field.kind {
                    GoldKind::Number { .. } => {
                        let n = f.numbers.len() as u64;
                        let exact = f.numbers.iter().filter(|(g, j)| g == j).count() as f64;
                        let ints: Vec<(i64, i64)> = f
                            .numbers
                            .iter()
                            .filter(|(g, j)| g.fract() == 0.0 && j.fract() == 0.0)
                            .map(|&(g, j)| (g as i64, j as i64))
                            .collect();
                        let kappa = (ints.len() == f.numbers.len())
                            .then(|| metrics::quadratic_kappa(&ints))
                            .flatten();
                        (n, (n > 0).then(|| exact / n as f64), kappa, None)
                    }
                    _ => {
                        let pairs = f.pairs();
                        let n = pairs.len() as u64;
                        let same = pairs.iter().filter(|(g, j)| g == j).count() as f64;
                        let low = if lower_bound {
                            metrics::kappa_interval(
                                &pairs,
                                metrics::BOOTSTRAP_SEED,
                                metrics::resamples_for(pairs.len()),
                            )
                            .map(|i| i[0])
                        } else {
                            None
                        };
                        (
                            n,
                            (n > 0).then(|| same / n as f64),
                            metrics::cohen_kappa(&pairs),
                            low,
                        )
                    }
                };
                GateNumbers {
                    field: f.field.field.clone(),
                    n,
                    accuracy,
                    kappa,
                    kappa_low,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(kind: GoldKind) -> GoldField {
        GoldField {
            field: "answer".into(),
            property: None,
            column: "gold".into(),
            kind,
        }
    }

    fn grade(text: &str) -> Option<Grade<'_>> {
        Some(Grade { text, json: None })
    }

    /// Gold spelled as users spell it, per kind: `None` is an unknown value.
    #[test]
    fn gold_values_are_read_in_the_field_s_terms() {
        let classes = GoldKind::Classes(vec!["pass".into(), "fail".into(), "Pass".into()]);
        let cases: Vec<(&GoldKind, &str, Option<&str>)> = vec![
            (&classes, "fail", Some("fail")),
            (&classes, "FAIL", Some("fail")),
            // Two classes differ only in case: the exact one, or none.
            (&classes, "Pass", Some("Pass")),
            (&classes, "PASS", None),
            (&classes, "failed", None),
            (&GoldKind::Boolean, "Yes", Some("true")),
            (&GoldKind::Boolean, "0", Some("false")),
            (&GoldKind::Boolean, "maybe", None),
            (&GoldKind::Number { integer: true }, "3.0", Some("3")),
            (&GoldKind::Number { integer: false }, " 2.5 ", Some("2.5")),
            (&GoldKind::Number { integer: false }, "NaN", None),
            (&GoldKind::Number { integer: false }, "seven", None),
            (&GoldKind::Text, "anything at all", Some("anything at all")),
        ];
        for (kind, gold, want) in cases {
            assert_eq!(
                canonical_gold(kind, gold).as_deref(),
                want,
                "{kind:?} {gold:?}"
            );
        }
    }

    #[test]
    fn rows_are_counted_where_they_belong_and_agreement_is_said_per_row() {
        let f = field(GoldKind::Classes(vec!["a".into(), "b".into()]));
        let mut c = Collector::new(std::slice::from_ref(&f));
        let g = |s: &str| vec![Some(s.to_string())];
        assert_eq!(c.add(1, "1", &g("a"), grade("a"), "a"), vec![Some(true)]);
        assert_eq!(c.add(2, "2", &g("a"), grade("b"), "b!"), vec![Some(false)]);
        assert_eq!(c.add(3, "3", &[None], grade("a"), "a"), vec![None]);
        assert_eq!(c.add(4, "4", &g("a"), None, "???"), vec![None]);
        assert_eq!(c.add(5, "5", &g("c"), grade("a"), "a"), vec![None]);
        let a = &c.finish()[0];
        assert_eq!((a.n(), a.missing_gold, a.no_grade), (2, 1, 1));
        assert_eq!(
            a.unknown_gold,
            vec![UnknownGold {
                value: "c".into(),
                rows: 1
            }]
        );
        assert_eq!(a.disagreements.len(), 1);
        assert_eq!(
            (
                a.disagreements[0].gold.as_str(),
                a.disagreements[0].judge.as_str()
            ),
            ("a", "b")
        );
        // Two classes: the first is positive; row 3 (no gold) is the one unlabelled answer.
        let b = a.binary.as_ref().expect("two classes");
        assert_eq!((b.positive.as_str(), b.unlabelled), ("a", 1));
    }

    /// What `status.json` keeps reads back as it was written.
    #[test]
    fn field_agreement_round_trips_through_json() {
        for kind in [
            GoldKind::Classes(vec!["a".into(), "b".into()]),
            GoldKind::Number { integer: true },
        ] {
            let mut c = Collector::new(&[field(kind)]);
            for (i, (g, j)) in [("1", "1"), ("1", "2"), ("2", "2"), ("2", "1"), ("1", "1")]
                .iter()
                .enumerate()
            {
                let (g, j) = match c.fields[0].field.kind {
                    GoldKind::Number { .. } => (*g, *j),
                    _ => (
                        if *g == "1" { "a" } else { "b" },
                        if *j == "1" { "a" } else { "b" },
                    ),
                };
                c.add(i as u64 + 1, "k", &[Some(g.to_string())], grade(j), j);
            }
            let a = c.finish();
            let text = serde_json::to_string(&a).unwrap();
            let back: Vec<FieldAgreement> = serde_json::from_str(&text).unwrap();
            assert_eq!(back, a, "{text}");
        }
    }

    #[test]
    fn a_schema_property_is_read_from_the_object() {
        let f = GoldField {
            field: "answer.ok".into(),
            property: Some("ok".into()),
            column: "gold_ok".into(),
            kind: GoldKind::Boolean,
        };
        let json = serde_json::json!({"ok": true, "why": "fine"});
        let grade = Grade {
            text: "",
            json: Some(&json),
        };
        assert_eq!(judge_value(&f, grade).as_deref(), Some("true"));
        let null = serde_json::json!({"ok": null});
        let grade = Grade {
            text: "",
            json: Some(&null),
        };
        assert_eq!(judge_value(&f, grade), None);
    }
}
