//! `output.gold`: which input columns hold the expected values, checked
//! against the answer's shape, and resolved into one [`GoldField`] per
//! graded field or schema property.

use serde_json::Value;

use super::locate::{self, Seg};
use super::place::{json_at, key_path, problem_at};
use super::{Gold, Output, ParseMode, Problem};

/// How a field's values are compared with its gold values.
#[derive(Debug, Clone, PartialEq)]
pub enum GoldKind {
    /// A closed set of classes (labels, enum values): a gold value outside
    /// it is named as unknown, not counted as a disagreement.
    Classes(Vec<String>),
    /// `true` / `false` (gold may also say yes/no, 1/0).
    Boolean,
    /// An open set (regex captures, free text): compared exactly after trimming.
    Text,
    /// Numbers; `integer`: the scale is whole numbers (weighted κ applies).
    Number { integer: bool },
}

/// One graded field (or schema property) with a gold column.
#[derive(Debug, Clone, PartialEq)]
pub struct GoldField {
    /// `answer`, or `answer.category` for a schema property: how the
    /// output names it.
    pub field: String,
    /// The schema property whose value is graded, for object answers.
    pub property: Option<String>,
    /// The input column holding the gold values.
    pub column: String,
    pub kind: GoldKind,
}

impl GoldField {
    /// The output column saying whether judge and gold agree.
    pub fn agrees_column(&self) -> String {
        format!("{}_agrees", self.field)
    }
}

/// The gold fields of a checked spec, in the schema's property order.
pub(super) fn resolve(output: &Output, schema: Option<&Value>) -> Vec<GoldField> {
    let Some(gold) = &output.gold else {
        return Vec::new();
    };
    match (gold, schema) {
        (Gold::Column(column), None) => {
            let kind = match output.parse {
                ParseMode::Label => GoldKind::Classes(output.labels.clone().unwrap_or_default()),
                ParseMode::Number => GoldKind::Number { integer: false },
                _ => GoldKind::Text,
            };
            vec![GoldField {
                field: output.field.clone(),
                property: None,
                column: column.clone(),
                kind,
            }]
        }
        (Gold::Properties(map), Some(schema)) => properties(schema)
            .into_iter()
            .filter_map(|(name, node)| {
                let column = map.get(name)?;
                Some(GoldField {
                    field: format!("{}.{name}", output.field),
                    property: Some(name.to_string()),
                    column: column.clone(),
                    kind: kind_of(node).ok()?,
                })
            })
            .collect(),
        // Refused by `problems`.
        _ => Vec::new(),
    }
}

fn properties(schema: &Value) -> Vec<(&str, &Value)> {
    schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| (k.as_str(), v)).collect())
        .unwrap_or_default()
}

/// How a schema property compares, or why it cannot have gold values.
fn kind_of(node: &Value) -> Result<GoldKind, String> {
    if let Some(values) = node.get("enum").and_then(Value::as_array) {
        return Ok(GoldKind::Classes(
            values
                .iter()
                .filter(|v| !v.is_null())
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect(),
        ));
    }
    let types: Vec<&str> = match node.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect(),
        _ => vec![],
    };
    match types.as_slice() {
        ["boolean"] => Ok(GoldKind::Boolean),
        ["integer"] => Ok(GoldKind::Number { integer: true }),
        ["number"] => Ok(GoldKind::Number { integer: false }),
        ["string"] => Ok(GoldKind::Text),
        [] => Err("has no `type`".into()),
        [t] => Err(format!("is of type {t}")),
        _ => Err(format!("has several types ({})", types.join(", "))),
    }
}

/// What is wrong with `output.gold` and the quality gate, on the spec's
/// JSON after the answer schema was put inline.
pub(super) fn problems(json: &Value, locator: &locate::Locator) -> Vec<Problem> {
    let mut out = Vec::new();
    let at = |keys: &[&str]| key_path(keys);
    let gold = json_at(json, &at(&["output", "gold"]));
    let schema = json.pointer("/output/schema");
    let parse = json.pointer("/output/parse").and_then(Value::as_str);
    let mut columns: Vec<(Vec<Seg>, &str)> = Vec::new();
    match (gold, schema) {
        (None, _) => {}
        (Some(Value::String(c)), None) => {
            if parse == Some("json") {
                out.push(problem_at(
                    locator,
                    &at(&["output", "gold"]),
                    "`parse: json` has no single value to compare; gold needs `parse: label`, `number`, `regex` or `text`, or an `output.schema` with a map `gold: {property: column}`".into(),
                ));
            }
            columns.push((at(&["output", "gold"]), c));
        }
        (Some(Value::String(_)), Some(_)) => out.push(problem_at(
            locator,
            &at(&["output", "gold"]),
            "with an answer schema, gold maps properties to columns, e.g. `gold: {category: gold_category}`".into(),
        )),
        (Some(Value::Object(_)), None) => out.push(problem_at(
            locator,
            &at(&["output", "gold"]),
            "a map of gold columns needs `output.schema` (its keys are the schema's properties); without a schema, name one column: `gold: COLUMN`".into(),
        )),
        (Some(Value::Object(map)), Some(schema)) => {
            let props = properties(schema);
            for (name, column) in map {
                let path = at(&["output", "gold", name]);
                match props.iter().find(|(p, _)| p == name) {
                    None => out.push(problem_at(
                        locator,
                        &path,
                        format!(
                            "`{name}` is not a top-level property of output.schema; its properties are: {}",
                            props.iter().map(|(p, _)| *p).collect::<Vec<_>>().join(", ")
                        ),
                    )),
                    Some((_, node)) => {
                        if let Err(why) = kind_of(node) {
                            out.push(problem_at(
                                locator,
                                &path,
                                format!(
                                    "property `{name}` {why}; gold values compare enums, booleans, integers, numbers and strings"
                                ),
                            ));
                        }
                    }
                }
                match column.as_str() {
                    Some(c) if !c.trim().is_empty() => columns.push((path, c)),
                    _ => out.push(problem_at(
                        locator,
                        &path,
                        "must name an input column".into(),
                    )),
                }
            }
        }
        // The JSON Schema check refused other shapes already.
        (Some(_), _) => {}
    }
    // A gold column in the prompt would show the model the expected answer.
    if let Some(user) = json.pointer("/prompt/user").and_then(Value::as_str)
        && let Ok(t) = crate::template::Template::parse(user)
    {
        let named = t.placeholders();
        for (path, column) in &columns {
            if named.contains(column) {
                out.push(problem_at(
                    locator,
                    path,
                    format!(
                        "`{column}` is a gold column, and prompt.user names it: the model would see the expected answer; take `{{{{ {column} }}}}` out of the prompt"
                    ),
                ));
            }
        }
    }
    for key in ["min_kappa", "min_accuracy"] {
        if gold.is_none() && json_at(json, &at(&["halt", key])).is_some() {
            out.push(problem_at(
                locator,
                &at(&["halt", key]),
                format!("halt.{key} compares the judge with gold values; set `output.gold` to the column that holds them"),
            ));
        }
    }
    if let Some(v) = json_at(json, &at(&["halt", "min_accuracy"])) {
        let rate: Result<super::Rate, _> = serde_json::from_value(v.clone());
        if let Err(why) = rate
            .map_err(|_| "must be a share such as 0.8 or `80%`".to_string())
            .and_then(|r| r.fraction().map(|_| ()))
        {
            out.push(problem_at(locator, &at(&["halt", "min_accuracy"]), why));
        }
    }
    out
}
