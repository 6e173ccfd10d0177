//! The output pass: every input row in order, its outcome judged by the
//! one `Judge` (the output file, the summary and `report` cannot disagree),
//! each row's request checked against the plan before the file is renamed
//! into place.

use std::collections::BTreeMap;
use std::path::Path;

use crate::agreement::{Collector, FieldAgreement, Grade};
use crate::answer;
use crate::error::{Error, Result};
use crate::grades::{self, FailureClass, FailureExample, PropertyStats};
use crate::input::Source;
use crate::output::{self, AddedColumns, RowResult, RowStatus, Written};
use crate::spec::{CheckedSpec, ParseMode};
use crate::state::{JobStore, Outcome, PlanRecord};
use crate::ui::Ui;

/// What the output pass learned besides the rows.
#[derive(Debug, Clone, Default)]
pub struct Graded {
    pub written: Written,
    /// For `number` and `label` parses: how often each value occurs.
    pub distribution: Vec<(String, u64)>,
    /// For `output.schema`: each numeric, enum or boolean property's statistics.
    pub grades: Vec<PropertyStats>,
    /// Parse failures by reason, most frequent first.
    pub parse_failures_by_reason: Vec<(String, u64)>,
    /// Final API failures by error code, most frequent first.
    pub api_failures_by_code: Vec<(String, u64)>,
    /// Each failure class with its first few rows: API failures first, then
    /// parse failures, each most frequent first.
    pub failures: Vec<FailureClass>,
    /// Agreement with the gold values, per gold field (`output.gold`).
    pub agreement: Vec<FieldAgreement>,
    /// Rows left out of the file (`Rows::Disagreements`).
    pub left_out: u64,
}

/// Where a row is and what its gold values are, for the judge.
pub struct RowAt<'a> {
    pub number: u64,
    pub key: &'a str,
    /// The gold cells, in `spec.gold`'s order (empty without gold).
    pub gold: Vec<Option<String>>,
}

/// Example rows kept per failure class.
const FAILURE_EXAMPLES: usize = 3;
/// Longest error message kept with an example.
const ERROR_CUT: usize = 300;

/// Turns each row's outcome into its output values and adds up what the
/// grades look like; the one place both the output file and `report` judge
/// answers, so they cannot disagree.
struct Judge {
    parser: answer::Parser,
    mode: ParseMode,
    dist: BTreeMap<String, u64>,
    tally: grades::Tally,
    written: Written,
    failure_codes: BTreeMap<String, u64>,
    /// Failure classes by (kind, class), with their first rows.
    failures: BTreeMap<(&'static str, String), FailureClass>,
    agreement: Collector,
    /// Leave out of the file every row with no disagreement.
    only_disagreements: bool,
    left_out: u64,
}

impl Judge {
    fn new(spec: &CheckedSpec) -> Result<Judge> {
        Ok(Judge {
            parser: answer::Parser::for_spec(spec).map_err(Error::usage)?,
            mode: spec.output().parse,
            dist: BTreeMap::new(),
            tally: grades::Tally::new(spec.schema.as_ref()),
            written: Written::default(),
            failure_codes: BTreeMap::new(),
            failures: BTreeMap::new(),
            agreement: Collector::new(&spec.gold),
            only_disagreements: false,
            left_out: 0,
        })
    }

    fn fail(&mut self, kind: &'static str, class: &str, at: &RowAt, raw: &str, error: &str) {
        let c = self
            .failures
            .entry((kind, class.to_string()))
            .or_insert_with(|| FailureClass {
                kind: kind.to_string(),
                class: class.to_string(),
                rows: 0,
                examples: Vec::new(),
            });
        c.rows += 1;
        if c.examples.len() < FAILURE_EXAMPLES {
            c.examples.push(FailureExample {
                row: at.number,
                key: at.key.to_string(),
                raw: crate::agreement::cut(raw, crate::agreement::RAW_CUT),
                error: crate::agreement::cut(error, ERROR_CUT),
            });
        }
    }

    fn row(&mut self, at: RowAt, outcome: Option<Outcome>) -> RowResult {
        let mut r = self.judge(&at, outcome);
        if !self.agreement.is_empty() {
            let grade = (r.status == RowStatus::Ok).then(|| Grade {
                text: &r.value,
                json: r.json.as_ref(),
            });
            r.agrees = self
                .agreement
                .add(at.number, at.key, &at.gold, grade, &r.raw);
        }
        if self.only_disagreements {
            r.omit = !r.agrees.contains(&Some(false));
            self.left_out += u64::from(r.omit);
        }
        r
    }

    fn judge(&mut self, at: &RowAt, outcome: Option<Outcome>) -> RowResult {
        let r = match outcome {
            Some(Outcome::Success(res)) => {
                let mut r = RowResult {
                    raw: res.answer.clone(),
                    input_tokens: Some(res.input_tokens),
                    output_tokens: Some(res.output_tokens),
                    ..RowResult::default()
                };
                match self.parser.parse_value(&res.answer) {
                    Ok(v) => {
                        if let Some(j) = &v.json {
                            self.tally.add(j);
                        } else if matches!(self.mode, ParseMode::Number | ParseMode::Label) {
                            *self.dist.entry(v.text.clone()).or_default() += 1;
                        }
                        r.value = v.text;
                        r.json = v.json;
                        r.status = RowStatus::Ok;
                    }
                    Err(why) => {
                        self.tally.fail(&why.class);
                        self.fail("parse", &why.class, at, &res.answer, &why.message);
                        r.status = RowStatus::ParseError;
                        r.error = why.message;
                    }
                }
                r
            }
            Some(Outcome::Failure(f)) => {
                *self.failure_codes.entry(f.code.clone()).or_default() += 1;
                self.fail(
                    "api",
                    &f.code,
                    at,
                    "",
                    &format!("{}: {}", f.code, f.message),
                );
                RowResult {
                    status: RowStatus::Failed,
                    error: format!("{}: {}", f.code, f.message),
                    ..RowResult::default()
                }
            }
            None => RowResult::default(),
        };
        self.written.count(r.status);
        r
    }

    fn finish(self) -> Graded {
        let mut dist: Vec<(String, u64)> = self.dist.into_iter().collect();
        if self.mode == ParseMode::Number {
            dist.sort_by(|a, b| {
                let x: f64 = a.0.parse().unwrap_or(f64::MAX);
                let y: f64 = b.0.parse().unwrap_or(f64::MAX);
                x.total_cmp(&y)
            });
        }
        let mut codes: Vec<(String, u64)> = self.failure_codes.into_iter().collect();
        codes.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let mut failures: Vec<FailureClass> = self.failures.into_values().collect();
        failures.sort_by(|a, b| {
            (a.kind != "api", std::cmp::Reverse(a.rows), &a.class).cmp(&(
                b.kind != "api",
                std::cmp::Reverse(b.rows),
                &b.class,
            ))
        });
        Graded {
            written: self.written,
            distribution: dist,
            grades: self.tally.properties(),
            parse_failures_by_reason: self.tally.failures(),
            api_failures_by_code: codes,
            failures,
            agreement: if self.agreement.is_empty() {
                Vec::new()
            } else {
                self.agreement.finish()
            },
            left_out: self.left_out,
        }
    }
}

/// Write the output file from the state: every input row in order.
/// Returns the counts and what the grades look like.
pub fn write_output_file(
    store: &JobStore,
    spec: &CheckedSpec,
    plan: &PlanRecord,
    ui: &Ui,
) -> Result<Graded> {
    write_output_to(
        store,
        spec,
        plan,
        &spec.output_path,
        spec.output().format,
        Rows::All,
        ui,
    )
}

/// Which rows an output file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rows<'a> {
    All,
    /// Only rows where the judge and a gold value differ (`export --disagreements`).
    Disagreements,
    /// Only these rows, by row number (a rehearsal's sample file); the
    /// others are neither written nor counted.
    Only(&'a std::collections::BTreeSet<u64>),
}

/// Same, to any path and format (`export`).
pub fn write_output_to(
    store: &JobStore,
    spec: &CheckedSpec,
    plan: &PlanRecord,
    path: &Path,
    format: Option<crate::spec::Format>,
    rows: Rows<'_>,
    ui: &Ui,
) -> Result<Graded> {
    let format = output::format_for(path, format)?;
    // Never a worse output over a better one: outcomes the state lost
    // would turn graded rows into "not graded".
    if let Some(damage) = store.outcomes_damage()? {
        return Err(damage.into());
    }
    // Checked by the commands before any work too; this is the last line of
    // defence for every writer of the output.
    crate::protect::check_output(
        path,
        if path == spec.output_path {
            crate::protect::OutputFrom::Spec(&spec.file)
        } else {
            crate::protect::OutputFrom::Flag("--out")
        },
        spec,
        None,
        store.layout().root(),
    )?;
    let mut judge = Judge::new(spec)?;
    judge.only_disagreements = rows == Rows::Disagreements;
    let added = AddedColumns::for_spec(spec);
    let sources: Vec<Source> = spec
        .inputs
        .iter()
        .map(|p| Source::of_input(p, spec.input()))
        .collect::<Result<_, _>>()?;
    let prompt = crate::prompt::Prompt::load(spec)?;
    let builder = crate::plan::request_builder(spec, &prompt);
    // Rows whose request is no longer the planned one (the row was edited,
    // or the prompt files were): never paired with an answer to other text.
    let changed: std::cell::RefCell<Vec<String>> = Default::default();
    let changed_count = std::cell::Cell::new(0u64);
    let mut requests = store.requests(plan.generation);
    let id_column = spec.input().id.clone();
    let meter = ui.progress_rows(plan.rows, "writing the output");
    let result_of = |row: &crate::input::Row| {
        if row.number.is_multiple_of(4096) {
            meter.set_position(row.number);
        }
        let req = requests
            .next()
            .transpose()?
            .ok_or_else(|| input_changed(spec))?;
        let key = match &id_column {
            Some(c) => row.get(c).unwrap_or_default().to_string(),
            None => row.number.to_string(),
        };
        if req.row != row.number || req.key != key {
            return Err(input_changed(spec));
        }
        let now = crate::plan::row_fingerprint(&prompt, &builder, row);
        if now.as_deref() != Ok(req.fingerprint.as_str()) {
            changed_count.set(changed_count.get() + 1);
            if changed.borrow().len() < 5 {
                changed.borrow_mut().push(format!(
                    "row {} (id {key}, {})",
                    row.number,
                    crate::input::row_place(&sources, row)
                ));
            }
            return Ok(RowResult::default());
        }
        if let Rows::Only(only) = rows
            && !only.contains(&row.number)
        {
            return Ok(RowResult {
                omit: true,
                ..RowResult::default()
            });
        }
        let at = RowAt {
            number: row.number,
            key: &key,
            gold: crate::agreement::gold_cells(&spec.gold, row),
        };
        Ok(judge.row(at, store.outcome(&req.fingerprint)?))
    };
    let before_commit = || match changed_count.get() {
        0 => Ok(()),
        n => Err(rows_changed(spec, n, &changed.borrow())),
    };
    let written = output::write(
        &spec.file,
        &sources,
        path,
        format,
        &added,
        result_of,
        before_commit,
    )?;
    meter.finish_and_clear();
    let graded = judge.finish();
    if let Rows::Only(_) = rows {
        // The file counts every row it read; the judge only the sample's.
        return Ok(graded);
    }
    debug_assert_eq!(graded.written, written);
    Ok(Graded { written, ..graded })
}

/// What the grades look like, from the state alone (no input files are
/// read): the same judgement as the output file's, for `report`.
pub fn grade_stats(store: &JobStore, spec: &CheckedSpec, plan: &PlanRecord) -> Result<Graded> {
    let mut judge = Judge::new(spec)?;
    let mut gold = gold_rows(store, spec, plan)?.into_iter().peekable();
    for req in store.requests(plan.generation) {
        let req = req?;
        let cells = match gold.peek() {
            Some(g) if g.row == req.row => gold.next().map(|g| g.gold).unwrap_or_default(),
            _ => vec![None; spec.gold.len()],
        };
        let at = RowAt {
            number: req.row,
            key: &req.key,
            gold: cells,
        };
        judge.row(at, store.outcome(&req.fingerprint)?);
    }
    Ok(judge.finish())
}

/// The gold values the plan recorded, in row order (none without `output.gold`).
pub fn gold_rows(
    store: &JobStore,
    spec: &CheckedSpec,
    plan: &PlanRecord,
) -> Result<Vec<crate::state::gold::GoldRow>> {
    if spec.gold.is_empty() {
        return Ok(Vec::new());
    }
    let dir = store.plan_dir(plan.generation);
    crate::state::gold::read(&dir)
        .map(Option::unwrap_or_default)
        .map_err(|e| Error::io("read gold values in", &dir, e))
}

/// `n` rows whose request is not the planned one (`named`: the first few).
fn rows_changed(spec: &CheckedSpec, n: u64, named: &[String]) -> Error {
    let more = n.saturating_sub(named.len() as u64);
    Error::usage_with_hint(
        format!(
            "{n} row{} of job `{}` changed since the plan (the row's text, or a prompt file): {}{}; their answers are to other text, so no output was written",
            if n == 1 { "" } else { "s" },
            spec.name(),
            named.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        ),
        format!(
            "run `batchgrader apply {}` to plan again: only the changed rows are graded again, the others keep their answers",
            spec.file.display()
        ),
    )
}

fn input_changed(spec: &CheckedSpec) -> Error {
    Error::usage_with_hint(
        format!(
            "the input of job `{}` changed since it was planned: its rows no longer match the plan",
            spec.name()
        ),
        format!(
            "run `batchgrader apply {}` to plan the changed rows (rows already graded are kept)",
            spec.file.display()
        ),
    )
}
