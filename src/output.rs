//! Writing the graded output: every input row, in input order, its columns
//! verbatim, then the answer columns. Used by `apply` at the end and by
//! `export`. The file is written to a temporary name beside the target and
//! renamed into place, so a reader never sees half a file.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::input::{Fields, Row, RowReader, Source};
use crate::spec::Format;

/// What became of one row.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RowResult {
    pub status: RowStatus,
    /// The parsed value (or the answer for `parse: text`).
    pub value: String,
    /// The answer as the model wrote it.
    pub raw: String,
    /// Why the row failed or did not parse.
    pub error: String,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    /// The parsed answer, for JSON answers (`parse: json`, `output.schema`).
    pub json: Option<serde_json::Value>,
    /// Per gold field (`output.gold`): whether judge and gold agree;
    /// `None` when there is nothing to compare.
    pub agrees: Vec<Option<bool>>,
    /// Leave the row out of the file (`export --disagreements`).
    pub omit: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RowStatus {
    Ok,
    ParseError,
    Failed,
    #[default]
    NotGraded,
}

impl RowStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RowStatus::Ok => "ok",
            RowStatus::ParseError => "parse_error",
            RowStatus::Failed => "failed",
            RowStatus::NotGraded => "not_graded",
        }
    }
}

/// The columns added after the input's own.
#[derive(Debug, Clone, Default)]
pub struct AddedColumns {
    pub field: String,
    /// Add `<field>_raw` (when the answer is parsed).
    pub raw: bool,
    /// Add `<field>_input_tokens` and `<field>_output_tokens`.
    pub usage: bool,
    /// `output.schema`'s top-level properties: a column `<field>.<property>`
    /// each, after `<field>`.
    pub properties: Vec<String>,
    /// Answers are JSON: JSON and JSONL outputs hold `<field>` as the parsed
    /// value itself, nested (and no `<field>.<property>` columns, which the
    /// nested value holds).
    pub nested: bool,
    /// `<field>_agrees` (or `<field>.<property>_agrees`) per gold field, last.
    pub agrees: Vec<String>,
}

impl AddedColumns {
    /// The columns a job's output adds, from its spec: the one list every
    /// check of output column names (e.g. against input columns) uses.
    pub fn for_spec(spec: &crate::spec::CheckedSpec) -> AddedColumns {
        let o = spec.output();
        let json = spec.schema.is_some() || o.parse == crate::spec::ParseMode::Json;
        AddedColumns {
            field: o.field.clone(),
            raw: spec.schema.is_some() || o.parse != crate::spec::ParseMode::Text,
            usage: o.include_usage,
            properties: spec
                .schema
                .as_ref()
                .map(crate::answer::properties)
                .unwrap_or_default(),
            nested: json,
            agrees: spec.gold.iter().map(|g| g.agrees_column()).collect(),
        }
    }

    /// Every column added to a CSV output, in order. JSON and JSONL outputs
    /// add the same, less the `<field>.<property>` columns when `nested`.
    pub fn names(&self) -> Vec<String> {
        let f = &self.field;
        let mut v = vec![f.clone()];
        v.extend(self.properties.iter().map(|p| format!("{f}.{p}")));
        v.push(format!("{f}_status"));
        if self.raw {
            v.push(format!("{f}_raw"));
        }
        v.push(format!("{f}_error"));
        if self.usage {
            v.push(format!("{f}_input_tokens"));
            v.push(format!("{f}_output_tokens"));
        }
        v.extend(self.agrees.iter().cloned());
        v
    }

    fn values(&self, r: &RowResult) -> Vec<String> {
        let mut v = vec![r.value.clone()];
        v.extend(
            self.properties
                .iter()
                .map(|p| crate::answer::cell(r.json.as_ref().and_then(|j| j.get(p)))),
        );
        v.push(r.status.as_str().to_string());
        if self.raw {
            v.push(r.raw.clone());
        }
        v.push(r.error.clone());
        if self.usage {
            v.push(r.input_tokens.map(|t| t.to_string()).unwrap_or_default());
            v.push(r.output_tokens.map(|t| t.to_string()).unwrap_or_default());
        }
        v.extend(
            (0..self.agrees.len()).map(|i| match r.agrees.get(i).copied().flatten() {
                Some(true) => "true".to_string(),
                Some(false) => "false".to_string(),
                None => String::new(),
            }),
        );
        v
    }
}

/// The added columns that `row` already has: writing them would repeat a
/// CSV header name, or a key of a JSON object (a JSON reader then keeps only
/// one of the two values).
pub fn collisions<'a>(names: &'a [String], row: &Row) -> Vec<&'a str> {
    names
        .iter()
        .filter(|n| row.get(n).is_some())
        .map(String::as_str)
        .collect()
}

/// A field name whose added columns `row` does not have.
fn free_field(added: &AddedColumns, row: &Row) -> String {
    let f = &added.field;
    let candidates = [
        format!("{f}_result"),
        format!("model_{f}"),
        format!("{f}_graded"),
    ];
    for c in candidates
        .into_iter()
        .chain((2..).map(|i| format!("{f}_{i}")))
    {
        let try_added = AddedColumns {
            field: c.clone(),
            ..added.clone()
        };
        if collisions(&try_added.names(), row).is_empty() {
            return c;
        }
    }
    unreachable!("the counter above never ends")
}

/// Refuse `row` when the output would repeat one of its columns.
pub fn check_collisions(
    spec_file: &Path,
    added: &AddedColumns,
    names: &[String],
    sources: &[Source],
    row: &Row,
) -> Result<()> {
    let clashing = collisions(names, row);
    if clashing.is_empty() {
        return Ok(());
    }
    let list = clashing
        .iter()
        .map(|c| format!("`{c}`"))
        .collect::<Vec<_>>()
        .join(", ");
    Err(Error::usage_with_hint(
        format!(
            "{}: output.field: the output column{} {list} would repeat {} of the input ({}); the output would have two columns of one name",
            spec_file.display(),
            if clashing.len() == 1 { "" } else { "s" },
            if clashing.len() == 1 {
                "a column"
            } else {
                "columns"
            },
            crate::input::row_place(sources, row),
        ),
        format!(
            "set output.field to a name the input does not use, for example `field: {}`",
            free_field(added, row)
        ),
    ))
}

impl AddedColumns {
    /// The added members of a JSON or JSONL row: `<field>` nested when the
    /// answer is JSON (null when the row has no parsed answer).
    fn json_members(&self, r: &RowResult) -> Vec<(String, serde_json::Value)> {
        use serde_json::Value;
        let names = self.names();
        let values = self.values(r);
        let skip = if self.nested {
            self.properties.len()
        } else {
            0
        };
        let mut out: Vec<(String, Value)> = Vec::with_capacity(names.len());
        let first_agrees = names.len() - self.agrees.len();
        for (i, (k, v)) in names.into_iter().zip(values).enumerate() {
            if i == 0 && self.nested {
                out.push((k, r.json.clone().unwrap_or(Value::Null)));
            } else if i >= first_agrees {
                // A JSON output says agreement as a boolean, or null.
                let agrees = r.agrees.get(i - first_agrees).copied().flatten();
                out.push((k, agrees.map_or(Value::Null, Value::Bool)));
            } else if i == 0 || i > skip {
                out.push((k, Value::String(v)));
            }
        }
        out
    }
}

/// Counts of what was written.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Written {
    pub rows: u64,
    pub ok: u64,
    pub parse_errors: u64,
    pub failed: u64,
    pub not_graded: u64,
}

impl Written {
    /// One more row of this status.
    pub fn count(&mut self, status: RowStatus) {
        self.rows += 1;
        match status {
            RowStatus::Ok => self.ok += 1,
            RowStatus::ParseError => self.parse_errors += 1,
            RowStatus::Failed => self.failed += 1,
            RowStatus::NotGraded => self.not_graded += 1,
        }
    }
}

/// Write `path` in `format` from the inputs and each row's result.
pub fn write(
    spec_file: &Path,
    sources: &[Source],
    path: &Path,
    format: Format,
    added: &AddedColumns,
    mut result_of: impl FnMut(&Row) -> Result<RowResult>,
    before_commit: impl FnOnce() -> Result<()>,
) -> Result<Written> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create folder", dir, e))?;
    }
    let tmp = temp_path(path);
    let file = crate::nofollow::create(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let outcome = write_rows(
        spec_file,
        sources,
        format,
        added,
        &mut result_of,
        &mut w,
        &tmp,
    );
    // The last word before the file replaces the old one: a check over the
    // whole input (say, rows that changed) can still keep the old output.
    let outcome = outcome.and_then(|w| before_commit().map(|()| w));
    let finished = outcome.and_then(|written| {
        let file = w
            .into_inner()
            .map_err(|e| Error::io("write", &tmp, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io("write", &tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io("rename into", path, e))?;
        Ok(written)
    });
    if finished.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    finished
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or("output".into(), |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

fn write_rows(
    spec_file: &Path,
    sources: &[Source],
    format: Format,
    added: &AddedColumns,
    result_of: &mut impl FnMut(&Row) -> Result<RowResult>,
    w: &mut impl Write,
    tmp: &Path,
) -> Result<Written> {
    let io = |e| Error::io("write", tmp, e);
    let names = added.names();
    // CSV to CSV is spliced byte for byte when every input shares one header;
    // anything else goes through the cells.
    let csv_verbatim = format == Format::Csv && same_csv_headers(sources)?;
    // A CSV output keeps the CSV input's separator (`input.delimiter`):
    // spliced rows must, and the file then reads back with the same spec.
    let d = char::from(
        sources
            .iter()
            .find(|s| s.format == Format::Csv)
            .map_or(b',', |s| s.delimiter),
    );
    let columns = if format == Format::Csv && !csv_verbatim {
        Some(union_columns(sources)?)
    } else {
        None
    };
    let mut written = Written::default();
    if format == Format::Json {
        w.write_all(b"[\n").map_err(io)?;
    }
    let mut header_done = false;
    // Rows written (all of them, unless some are omitted).
    let mut shown = 0u64;
    let mut checked_file = None;
    for row in RowReader::new(sources.to_vec(), true) {
        let row = row?;
        // A CSV file's header names every row's columns; objects differ.
        if checked_file != Some(row.file) || matches!(row.fields, Fields::Object(_)) {
            checked_file = Some(row.file);
            check_collisions(spec_file, added, &names, sources, &row)?;
        }
        let r = result_of(&row)?;
        // The header comes with the first row, written or not.
        if format == Format::Csv && !header_done {
            header_done = true;
            let header = match (&columns, &row.fields) {
                (None, Fields::Csv { header, .. }) => {
                    splice_csv(header.raw.as_deref().unwrap_or_default(), &names, d)
                }
                (Some(cols), _) => csv_line(cols.iter().chain(names.iter()), d),
                (None, Fields::Object(_)) => unreachable!("verbatim CSV needs CSV inputs"),
            };
            w.write_all(header.as_bytes()).map_err(io)?;
        }
        if r.omit {
            written.count(r.status);
            continue;
        }
        let values = added.values(&r);
        match format {
            Format::Csv => {
                let line = match &columns {
                    None => splice_csv(row.raw.as_deref().unwrap_or_default(), &values, d),
                    Some(cols) => csv_line(
                        cols.iter()
                            .map(|c| row.get(c).unwrap_or_default().to_string())
                            .chain(values.iter().cloned()),
                        d,
                    ),
                };
                w.write_all(line.as_bytes()).map_err(io)?;
            }
            Format::Jsonl | Format::Json => {
                if format == Format::Json && shown > 0 {
                    w.write_all(b",\n").map_err(io)?;
                }
                let obj = json_row(&row, &added.json_members(&r));
                w.write_all(obj.as_bytes()).map_err(io)?;
                if format == Format::Jsonl {
                    w.write_all(b"\n").map_err(io)?;
                }
            }
        }
        shown += 1;
        written.count(r.status);
    }
    if format == Format::Json {
        w.write_all(if shown > 0 { b"\n]\n" } else { b"]\n" })
            .map_err(io)?;
    }
    Ok(written)
}

fn same_csv_headers(sources: &[Source]) -> Result<bool> {
    if sources.iter().any(|s| s.format != Format::Csv) {
        return Ok(false);
    }
    let mut first: Option<Vec<String>> = None;
    for s in sources {
        let mut rdr = csv::Reader::from_path(&s.path)
            .map_err(|e| Error::usage(format!("{}: {e}", s.path.display())))?;
        let names: Vec<String> = rdr
            .headers()
            .map_err(|e| Error::usage(format!("{}: {e}", s.path.display())))?
            .iter()
            .map(str::to_string)
            .collect();
        match &first {
            None => first = Some(names),
            Some(f) if *f != names => return Ok(false),
            Some(_) => {}
        }
    }
    Ok(true)
}

/// Every column of every row, in order of first appearance.
fn union_columns(sources: &[Source]) -> Result<Vec<String>> {
    let mut cols: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for row in RowReader::new(sources.to_vec(), false) {
        let row = row?;
        for name in row.column_names() {
            if seen.insert(name.to_string()) {
                cols.push(name.to_string());
            }
        }
    }
    Ok(cols)
}

/// A raw CSV record with fields appended before its line end.
fn splice_csv(raw: &str, extra: &[String], d: char) -> String {
    let body = raw.trim_end_matches(['\r', '\n']);
    let end = &raw[body.len()..];
    let end = if end.is_empty() { "\n" } else { end };
    let mut out = String::with_capacity(raw.len() + 32);
    out.push_str(body);
    for v in extra {
        out.push(d);
        out.push_str(&csv_field(v, d));
    }
    out.push_str(end);
    out
}

fn csv_line<'a>(fields: impl Iterator<Item = impl AsRef<str> + 'a>, d: char) -> String {
    let mut out = String::new();
    for (i, f) in fields.enumerate() {
        if i > 0 {
            out.push(d);
        }
        out.push_str(&csv_field(f.as_ref(), d));
    }
    out.push('\n');
    out
}

fn csv_field(v: &str, d: char) -> String {
    if v.contains([d, '"', '\n', '\r']) || v.starts_with(' ') || v.ends_with(' ') {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v.to_string()
    }
}

/// A JSON object for the row: the input object's text spliced (so numbers
/// and nesting stay as written), or the cells as strings for CSV input.
fn json_row(row: &Row, members: &[(String, serde_json::Value)]) -> String {
    let mut extra = String::new();
    for (k, v) in members {
        extra.push_str(&serde_json::to_string(k).expect("strings serialize"));
        extra.push(':');
        extra.push_str(&v.to_string());
        extra.push(',');
    }
    extra.pop();
    match (&row.fields, row.raw.as_deref()) {
        (Fields::Object(_), Some(raw)) => {
            let body = raw.trim();
            let inner = body[1..body.len() - 1].trim();
            if inner.is_empty() {
                format!("{{{extra}}}")
            } else {
                format!("{{{inner},{extra}}}")
            }
        }
        _ => {
            let mut map = serde_json::Map::new();
            for (k, v) in row.cells() {
                map.insert(k.to_string(), serde_json::Value::String(v.to_string()));
            }
            let mut s = serde_json::Value::Object(map).to_string();
            s.pop();
            if s.len() > 1 {
                s.push(',');
            }
            format!("{s}{extra}}}")
        }
    }
}

/// The output format: the spec's `output.format`, else the path's extension.
pub fn format_for(path: &Path, explicit: Option<Format>) -> Result<Format> {
    explicit.or_else(|| Format::from_path(path)).ok_or_else(|| {
        Error::usage_with_hint(
            format!("cannot tell the output format of {}", path.display()),
            "use a .csv, .json or .jsonl name, or set output.format",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_splicing_keeps_line_ends() {
        assert_eq!(
            splice_csv("a,b\r\n", &["x".into(), "y,z".into()], ','),
            "a,b,x,\"y,z\"\r\n"
        );
        assert_eq!(
            splice_csv("a,\"q\"\"\"\n", &["1".into()], ','),
            "a,\"q\"\"\",1\n"
        );
        assert_eq!(splice_csv("last", &["1".into()], ','), "last,1\n");
        // A `;`-separated input keeps its separator; a `;` in a value is quoted.
        assert_eq!(
            splice_csv("a;b\n", &["x".into(), "y;z".into(), "p,q".into()], ';'),
            "a;b;x;\"y;z\";p,q\n"
        );
    }

    #[test]
    fn column_names() {
        let a = AddedColumns {
            field: "grade".into(),
            raw: true,
            usage: true,
            ..AddedColumns::default()
        };
        assert_eq!(
            a.names(),
            [
                "grade",
                "grade_status",
                "grade_raw",
                "grade_error",
                "grade_input_tokens",
                "grade_output_tokens"
            ]
        );
        let b = AddedColumns {
            field: "g".into(),
            raw: false,
            usage: false,
            ..AddedColumns::default()
        };
        assert_eq!(b.names(), ["g", "g_status", "g_error"]);
        let s = AddedColumns {
            field: "g".into(),
            raw: true,
            properties: vec!["accuracy".into(), "reason".into()],
            nested: true,
            ..AddedColumns::default()
        };
        assert_eq!(
            s.names(),
            [
                "g",
                "g.accuracy",
                "g.reason",
                "g_status",
                "g_raw",
                "g_error"
            ]
        );
    }

    #[test]
    fn typed_cells_and_nested_json() {
        let s = AddedColumns {
            field: "g".into(),
            raw: true,
            properties: vec!["n".into(), "why".into(), "tags".into()],
            nested: true,
            ..AddedColumns::default()
        };
        let answer = serde_json::json!({"n": 4, "why": "a, b", "tags": ["x"]});
        let r = RowResult {
            status: RowStatus::Ok,
            value: answer.to_string(),
            raw: answer.to_string(),
            json: Some(answer.clone()),
            ..RowResult::default()
        };
        assert_eq!(
            s.values(&r)[1..4],
            ["4".to_string(), "a, b".into(), "[\"x\"]".into()]
        );
        let members = s.json_members(&r);
        let keys: Vec<&str> = members.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["g", "g_status", "g_raw", "g_error"]);
        assert_eq!(members[0].1, answer);
        let failed = RowResult {
            status: RowStatus::ParseError,
            error: "not JSON".into(),
            ..RowResult::default()
        };
        assert_eq!(s.json_members(&failed)[0].1, serde_json::Value::Null);
        assert_eq!(s.values(&failed)[1..4], ["", "", ""]);
    }
}
